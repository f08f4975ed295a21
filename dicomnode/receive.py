"""Receive stage: the node's SCP for C-ECHO and C-STORE (``acceptor.py`` speaks DICOM); what it accepts is stored
atomically and indexed here."""

from __future__ import annotations

import logging
import re
import shutil
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import ALL_TRANSFER_SYNTAXES
from pynetdicom.sop_class import (
    BasicTextSRStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    CTImageStorage,
    EnhancedCTImageStorage,
    EnhancedSRStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    Verification,
    XRayRadiationDoseSRStorage,
)

from dicomnode.config import NodeConfig
from dicomnode.delivery.commitment import Reporter, commitment_report, read_data_set
from dicomnode.delivery.send import record_commitment
from dicomnode.files import free_mb, move_into_place, remove_partial_writes
from dicomnode.net.acceptor import Acceptor, CommitmentReport, Policy, Received
from dicomnode.net.dimse import STORAGE_COMMITMENT, StoreStatus
from dicomnode.store.database import errors
from dicomnode.store.records import Store
from dicomnode.tls import receiver_context

log = logging.getLogger(__name__)

#: Storage SOP classes accepted: CT to process; SEG, SR and SC so a PACS can echo results back; dose reports
#: so that a PACS routing whole studies sees no failures.
ACCEPTED_SOP_CLASSES = (
    CTImageStorage,
    EnhancedCTImageStorage,
    SegmentationStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
    SecondaryCaptureImageStorage,
    BasicTextSRStorage,
    XRayRadiationDoseSRStorage,
)

#: What the receiver accepts, abstract syntax -> its transfer syntaxes (``docs/conformance.md`` lists them; its test
#: proposes each to the receiver): storage classes in every transfer syntax pynetdicom knows, Verification and
#: Storage Commitment in the two uncompressed little-endian ones.
ACCEPTED_CONTEXTS: dict[str, tuple[str, ...]] = {c: (ImplicitVRLittleEndian, ExplicitVRLittleEndian) for c in (Verification, STORAGE_COMMITMENT)} | {
    c: tuple(ALL_TRANSFER_SYNTAXES) for c in ACCEPTED_SOP_CLASSES
}

#: The elements read from a received header (a header cut short or broken shows as a missing or invalid UID).
INDEXED_TAGS = ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"]
#: (FFFF,FFFF): a length to be found from a delimiter (PS3.5 7.1.1).
UNDEFINED_LENGTH = 0xFFFFFFFF
#: Folder under ``storage`` where data sets are written while they arrive.
INCOMING = ".incoming"
#: PS3.5 9.1: components of digits separated by dots, no component with a leading zero, at most 64 characters.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
MAX_UID_LENGTH = 64


def valid_uid(uid: str) -> tuple[bool, str]:
    """Whether ``uid`` is a UID as PS3.5 9.1 defines it, and why not."""
    if not uid:
        return False, "missing"
    if len(uid) > MAX_UID_LENGTH:
        return False, f"{len(uid)} characters, more than {MAX_UID_LENGTH}"
    if not _UID.match(uid):
        return False, "not digits and dots without leading zeros"
    return True, ""


class OpenAssociations:
    """Which studies this receiver's open associations are sending, kept in the database so that completion on any
    receiver of a cluster sees them; written once per association and study."""

    def __init__(self, store: Store, receiver: str) -> None:
        self.store, self.receiver = store, receiver
        self._lock = threading.Lock()
        self._seen: dict[int, set[str]] = {}
        store.forget_associations(receiver)

    def touched(self, assoc_id: int, study_uid: str) -> None:
        with self._lock:
            if study_uid in self._seen.get(assoc_id, set()):
                return
        self.store.association_sent(self.receiver, str(assoc_id), study_uid)
        with self._lock:
            self._seen.setdefault(assoc_id, set()).add(study_uid)

    def closed(self, assoc_id: int, released: bool) -> None:
        with self._lock:
            if self._seen.pop(assoc_id, None) is None:
                return
        self.store.association_closed(self.receiver, str(assoc_id), released)


class KeyedLocks:
    """One lock per key, held by one thread at a time and dropped when no thread holds or waits for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._lock:
            lock, users = self._held.get(key, (threading.Lock(), 0))
            self._held[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, users = self._held[key]
                if users == 1:
                    del self._held[key]
                else:
                    self._held[key] = (lock, users - 1)


class Receiver:
    """The node's SCP: stores what it accepts under ``storage/<study>/<series>/<sop>.dcm``."""

    def __init__(self, config: NodeConfig, store: Store, open_associations: OpenAssociations) -> None:
        self._database_errors = errors()
        self.config = config
        self.store = store
        self.open = open_associations
        self.storage = config.path(config.storage)
        self.storage.mkdir(parents=True, exist_ok=True)
        for partial in remove_partial_writes(self.storage):
            log.warning("removed %s, left by a write that was cut off", partial)
        if store.db.dialect.name == "sqlite":
            self.reindex()
        self._acceptor: Acceptor | None = None
        self._instances = KeyedLocks()
        self._reporter = Reporter(config)

    def reindex(self) -> int:
        """Index stored instances the index lacks; returns how many. The fsynced file is the record: the embedded
        index commits without waiting for the disk (SQLite WAL, ``synchronous=NORMAL``), so a power cut may lose its
        last rows, never an acknowledged file; this puts them back at start. A second copy of an indexed instance
        is removed, with a warning."""
        indexed = self.store.indexed_paths()
        recovered = 0
        for path in sorted(self.storage.glob("*/*/*.dcm")):
            if str(path) in indexed:
                continue
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=INDEXED_TAGS)
            except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
                log.warning("cannot index %s found in storage: %s", path, exc)
                continue
            if self.store.add_instance(str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPClassUID), path, "(recovered)"):
                recovered += 1
            else:  # a second copy of an instance indexed elsewhere (sent twice at once before the receiver serialised it)
                log.warning(
                    "removed %s: a second copy of instance %s, which is stored at %s",
                    path,
                    ds.SOPInstanceUID,
                    ", ".join(self.store.paths_of(str(ds.SOPInstanceUID))),
                )
                path.unlink(missing_ok=True)
        if recovered:
            log.warning("indexed %d stored instances the index had lost (a power cut before its last commits reached the disk)", recovered)
        return recovered

    def start(self) -> None:
        incoming = self.storage / INCOMING
        shutil.rmtree(incoming, ignore_errors=True)
        incoming.mkdir()
        policy = Policy(
            ae_title=self.config.ae_title,
            contexts=ACCEPTED_CONTEXTS,
            check_called_ae=self.config.check_called_ae,
            allowed_callers=tuple(self.config.allowed_callers),
            allowed_addresses=tuple(self.config.allowed_addresses),
            max_associations=self.config.max_associations,
            max_data_set_bytes=self.config.max_instance_mb * 2**20,
            timeout_s=self.config.network_timeout_s,
            instance_timeout_s=self.config.instance_timeout_s,
            incoming=incoming,
            ssl_context=receiver_context(self.config),
        )
        self._acceptor = Acceptor((self.config.host, self.config.port), policy, self)
        self._acceptor.start()
        log.info("listening as %s on %s:%d", self.config.ae_title, self.config.host, self.config.port)

    def listening(self) -> bool:
        """Whether the SCP is serving (for ``/healthz``)."""
        return self._acceptor is not None

    def stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.stop()
            self._acceptor = None

    def refused(self, calling_ae: str, address: str, reason: str) -> None:
        """Log and record why an association is refused (A-ASSOCIATE-RJ follows)."""
        log.warning("refused an association from %s at %s: %s", calling_ae, address, reason)
        try:
            self.store.add_refusal(calling_ae, "", "", f"association from {address} refused: {reason}")
        except self._database_errors as exc:  # the refusal is still sent, and logged
            log.error("could not record the refusal: %s", exc)

    def commit(self, calling_ae: str, data_set: bytes, transfer_syntax: str) -> CommitmentReport | None:
        """A Storage Commitment request: which of its instances the node holds (``commitment.py``)."""
        try:
            return commitment_report(self.store, calling_ae, data_set, transfer_syntax)
        except self._database_errors as exc:
            log.error("storage commitment request from %s not answered: the database does not answer (%s)", calling_ae, exc)
            return None

    def report_later(self, report: CommitmentReport) -> None:
        self._reporter.later(report)

    def commitment_reported(self, calling_ae: str, event_type: int, data_set: bytes, transfer_syntax: str) -> bool:
        report = read_data_set(data_set, transfer_syntax)
        if report is None or "TransactionUID" not in report:
            log.warning("a storage commitment report from %s cannot be read", calling_ae)
            return False
        try:
            record_commitment(self.config, self.store, calling_ae, report)
        except self._database_errors as exc:  # the report is refused; the destination may send it again
            log.error("storage commitment report from %s not recorded: the database does not answer (%s)", calling_ae, exc)
            return False
        return True

    def closed(self, association: int, released: bool) -> None:
        try:
            self.open.closed(association, released)
        except self._database_errors as exc:  # its rows go with this receiver's heartbeat
            log.error("could not record the end of an association: %s", exc)

    def receive(self, received: Received) -> tuple[int, str]:
        """Check and store one instance; acknowledged only once it is on disk and indexed. With the database down,
        the answer is 0xA700 (out of resources): nothing is acknowledged that is not indexed, the sender tries again."""
        try:
            return self._store(received)
        except self._database_errors as exc:
            log.error("refusing an instance from %s: the database does not answer (%s)", received.calling_ae, exc)
            return StoreStatus.OUT_OF_RESOURCES, "database unavailable, send again later"

    def _store(self, received: Received) -> tuple[int, str]:
        """The data set is in a file of ``storage/.incoming``, after its File Meta Information; the checks run while
        it is fsynced, and it is moved into place once it is on disk."""
        calling_ae = received.calling_ae
        if received.error:
            log.error("refusing an instance from %s: %s", calling_ae, received.error)
            self.store.add_refusal(calling_ae, "", "", received.error)
            return StoreStatus.OUT_OF_RESOURCES, received.error
        size_mb = received.size / 2**20
        if size_mb > self.config.max_instance_mb:
            log.error("refusing an instance from %s: %.0f MB, above max_instance_mb=%d", calling_ae, size_mb, self.config.max_instance_mb)
            reason = f"instance of {size_mb:.0f} MB, above max_instance_mb={self.config.max_instance_mb}"
            self.store.add_refusal(calling_ae, "", "", reason)
            return StoreStatus.OUT_OF_RESOURCES, reason
        ds, broken = parse_data_set(received.path)
        if ds is None:
            return self._refuse(calling_ae, "", "", f"data set cannot be parsed: {broken}", "data set cannot be parsed")
        sop_uid = str(ds.get("SOPInstanceUID", "") or "")
        study_uid = str(ds.get("StudyInstanceUID", "") or "")
        series_uid = str(ds.get("SeriesInstanceUID", "") or "")
        sop_class = str(ds.get("SOPClassUID", "") or "")
        if broken:
            return self._refuse(calling_ae, study_uid[:64], sop_uid[:64], broken, broken[:64])
        invalid = [
            (name, why)
            for name, uid in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid), ("SOPInstanceUID", sop_uid))
            for ok, why in [valid_uid(uid)]
            if not ok
        ]
        if not sop_class:
            invalid.append(("SOPClassUID", "missing"))
        if invalid:
            reason = f"missing or invalid UID in the data set: {'; '.join(f'{name} {why}' for name, why in invalid)}"
            return self._refuse(calling_ae, study_uid[:64], sop_uid[:64], reason, f"invalid {', '.join(name for name, _ in invalid)}")
        for name, command, data_set in (("SOP Class", received.sop_class_uid, sop_class), ("SOP Instance", received.sop_instance_uid, sop_uid)):
            if command != data_set:
                reason = f"the data set's {name} UID {data_set} is not the command's Affected {name} UID {command}"
                return self._refuse(calling_ae, study_uid[:64], sop_uid[:64], reason, f"{name} UID differs from the command's", StoreStatus.DATA_SET_MISMATCH)
        self.open.touched(received.association, study_uid)
        with self._instances.hold(sop_uid):  # the same instance from two associations at once: one after the other
            return self._store_new(received, sop_uid, study_uid, series_uid, sop_class)

    def _store_new(self, received: Received, sop_uid: str, study_uid: str, series_uid: str, sop_class: str) -> tuple[int, str]:
        calling_ae = received.calling_ae
        if self.store.has_instance(sop_uid):
            log.info("duplicate instance %s acknowledged, not stored again", sop_uid)
            return StoreStatus.SUCCESS, ""
        free = free_mb(self.storage)
        if free < self.config.min_free_disk_mb:
            log.error("refusing %s: %.0f MB free, below min_free_disk_mb=%d", sop_uid, free, self.config.min_free_disk_mb)
            self.store.add_refusal(calling_ae, study_uid, sop_uid, f"disk nearly full ({free:.0f} MB free)")
            return StoreStatus.OUT_OF_RESOURCES, "disk nearly full"
        path = self.storage / study_uid / series_uid / f"{sop_uid}.dcm"
        try:
            received.durable.result()
            move_into_place(received.path, path)
        except OSError as exc:
            log.error("cannot write %s: %s", path, exc)
            self.store.add_refusal(calling_ae, study_uid, sop_uid, f"write failed: {exc}")
            return StoreStatus.OUT_OF_RESOURCES, "write failed"
        if not self.store.add_instance(sop_uid, study_uid, series_uid, sop_class, path, calling_ae):
            # indexed meanwhile by another receiver of the cluster, maybe in another series: keep one copy, the indexed one
            if str(path) not in self.store.paths_of(sop_uid):
                path.unlink(missing_ok=True)
            log.info("duplicate instance %s acknowledged: another receiver stored it first", sop_uid)
        return StoreStatus.SUCCESS, ""

    def _refuse(
        self, calling_ae: str, study_uid: str, sop_uid: str, reason: str, comment: str, status: StoreStatus = StoreStatus.CANNOT_UNDERSTAND
    ) -> tuple[int, str]:
        """``status`` (0xC000 unless named) with ``comment`` (an Error Comment holds 64 characters); the whole ``reason``
        is logged and recorded."""
        log.warning("refused an instance from %s (study %s, SOP %s): %s", calling_ae, study_uid or "?", sop_uid or "?", reason)
        self.store.add_refusal(calling_ae, study_uid, sop_uid, reason)
        return status, comment


def parse_data_set(path: Path) -> tuple[pydicom.Dataset | None, str]:
    """Read a received data set's structure, values longer than 256 bytes left on disk; returns it and why it is
    broken ("" if it is whole), or None and why it cannot be read. Broken: an element whose declared length runs past
    the end (a data set cut short), an undefined length without its delimiter, or bytes of the other VR encoding than
    the transfer syntax of its presentation context (PS3.5 7.1: a context fixes the encoding)."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, defer_size=256)
            size = path.stat().st_size
            lengths = [ds.get_item(tag, keep_deferred=True) for tag in ds.keys()]
    except Exception as exc:  # noqa: BLE001  # whatever a peer's bytes make pydicom raise, the data set is not understood
        return None, str(exc)
    messages = [str(w.message) for w in caught]
    if any("found implicit VR" in m or "found explicit VR" in m for m in messages):
        return ds, "the data set's VR encoding is not that of its presentation context's transfer syntax"
    if any("End of file" in m for m in messages):
        return ds, "the data set ends inside an element (an undefined length without its delimiter)"
    if ds.file_meta.TransferSyntaxUID.is_deflated:  # positions are in the inflated stream; a cut stream fails to inflate
        return ds, ""
    for element in lengths:
        length, start = getattr(element, "length", None), getattr(element, "value_tell", None)
        if length is not None and start is not None and length != UNDEFINED_LENGTH and start + length > size:
            return ds, f"the data set ends inside element {element.tag}: {length} bytes declared, {size - start} sent"
    return ds, ""
