"""Receive stage: a pynetdicom SCP for C-ECHO and C-STORE that stores instances atomically and indexes them."""

from __future__ import annotations

import enum
import logging
import re
import shutil
import socket
import ssl
import tempfile
import threading
from pathlib import Path
from typing import cast

import pydicom
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.dimse_primitives import C_STORE
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
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, Status
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.config import NodeConfig
from dicomnode.database import errors
from dicomnode.files import move_atomically, remove_partial_writes
from dicomnode.store import Store

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


class StoreStatus(enum.IntEnum):
    """The C-STORE statuses this SCP answers, named once; pynetdicom's STORAGE_SERVICE_CLASS_STATUS (PS3.4 Table
    B.2-1) gives each its meaning, see :meth:`meaning`."""

    SUCCESS = Status.SUCCESS
    OUT_OF_RESOURCES = 0xA700  # "Refused: Out of Resources": nothing was stored, the sender may try again
    CANNOT_UNDERSTAND = 0xC000  # "Cannot understand": the data set itself is unusable

    def meaning(self) -> str:
        category, meaning = STORAGE_SERVICE_CLASS_STATUS[self.value]
        return f"{category}: {meaning}" if meaning else category


#: Folder under ``storage`` where pynetdicom writes data sets while they arrive.
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

    def closed(self, assoc_id: int) -> None:
        with self._lock:
            if self._seen.pop(assoc_id, None) is None:
                return
        self.store.association_closed(self.receiver, str(assoc_id))


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
        self._server: ThreadedAssociationServer | None = None
        self._tempdir: str | None = None

    def reindex(self) -> int:
        """Index stored instances the index lacks; returns how many. The fsynced file is the record: the embedded
        index commits without waiting for the disk (SQLite WAL, ``synchronous=NORMAL``), so a power cut may lose its
        last rows, never an acknowledged file; this puts them back at start."""
        indexed = self.store.indexed_paths()
        recovered = 0
        for path in sorted(self.storage.glob("*/*/*.dcm")):
            if str(path) in indexed:
                continue
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"])
            except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
                log.warning("cannot index %s found in storage: %s", path, exc)
                continue
            if self.store.add_instance(str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPClassUID), path, "(recovered)"):
                recovered += 1
        if recovered:
            log.warning("indexed %d stored instances the index had lost (a power cut before its last commits reached the disk)", recovered)
        return recovered

    def _receive_to_disk(self) -> None:
        """Have pynetdicom write data sets to disk as they arrive, in a folder on the storage's file system so that
        storing one is a rename; memory does not grow with instance size. Both settings are process-wide (pynetdicom
        offers no other), so :meth:`stop` restores them."""
        incoming = self.storage / INCOMING
        shutil.rmtree(incoming, ignore_errors=True)
        incoming.mkdir()
        self._tempdir, tempfile.tempdir = tempfile.tempdir, str(incoming)
        _config.STORE_RECV_CHUNKED_DATASET = True

    def start(self) -> None:
        self._receive_to_disk()
        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_pdu_size = 0
        ae.add_supported_context(Verification)
        for sop_class in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        if self.config.allowed_callers:
            ae.require_calling_aet = list(self.config.allowed_callers)  # others get A-ASSOCIATE-RJ (calling AE not recognised)
        ae.require_called_aet = self.config.check_called_ae  # others get A-ASSOCIATE-RJ (called AE not recognised)
        ae.maximum_associations = self.config.max_associations  # more get A-ASSOCIATE-RJ (local limit exceeded)
        handlers: list[evt.EventHandlerType] = [
            (evt.EVT_REJECTED, self.on_rejected),
            (evt.EVT_C_ECHO, lambda event: StoreStatus.SUCCESS),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_RELEASED, self.on_closed),
            (evt.EVT_ABORTED, self.on_closed),
            (evt.EVT_CONN_CLOSE, self.on_closed),
        ]
        server = ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers, ssl_context=self._ssl_context())
        assert server is not None  # block=False returns the running server
        server.verify_request = self._verify_address  # type: ignore[method-assign]  # socketserver's hook, before any DICOM is read
        self._server = server
        log.info("listening as %s on %s:%d", self.config.ae_title, self.config.host, self.config.port)

    def listening(self) -> bool:
        """Whether the SCP is serving (for ``/healthz``)."""
        return self._server is not None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            tempfile.tempdir = self._tempdir
            _config.STORE_RECV_CHUNKED_DATASET = False
            self._server = None

    def _ssl_context(self) -> ssl.SSLContext | None:
        tls = self.config.tls
        if not tls.enabled:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.config.path(tls.ca_certificates) if tls.ca_certificates else None)
        context.verify_mode = ssl.CERT_REQUIRED if tls.ca_certificates else ssl.CERT_NONE
        context.load_cert_chain(self.config.path(tls.certificate), self.config.path(tls.private_key))
        return context

    def _verify_address(self, request: socket.socket | tuple[bytes, socket.socket], client_address: tuple[str, int]) -> bool:
        allowed = self.config.allowed_addresses
        if allowed and client_address[0] not in allowed:
            log.warning("refused a connection from %s: address not in allowed_addresses", client_address[0])
            return False
        return True

    def on_rejected(self, event: evt.Event) -> None:
        """Log and record why an association was refused (pynetdicom has already sent A-ASSOCIATE-RJ)."""
        requestor = event.assoc.requestor
        called = str(getattr(requestor.primitive, "called_ae_title", "") or "").strip()
        calling = str(requestor.ae_title or "").strip()
        if self.config.allowed_callers and calling not in self.config.allowed_callers:
            reason = "calling AE title not in allowed_callers"
        elif self.config.check_called_ae and called != self.config.ae_title:
            reason = f"called AE title {called!r} is not this node's {self.config.ae_title!r}"
        else:
            reason = f"more than max_associations={self.config.max_associations} associations at once"
        log.warning("refused an association from %s at %s: %s", calling, requestor.address, reason)
        self.store.add_refusal(calling, "", "", f"association from {requestor.address} refused: {reason}")

    def on_closed(self, event: evt.Event) -> None:
        try:
            self.open.closed(id(event.assoc))
        except self._database_errors as exc:  # its rows go with this receiver's heartbeat
            log.error("could not record the end of an association: %s", exc)

    def on_store(self, event: evt.Event) -> int:
        """Check and store one instance; acknowledged only once it is on disk and indexed. With the database down,
        the answer is 0xA700 (out of resources): nothing is acknowledged that is not indexed, the sender tries again."""
        try:
            return self._store(event)
        except self._database_errors as exc:
            log.error("refusing an instance from %s: the database does not answer (%s)", event.assoc.requestor.ae_title, exc)
            return StoreStatus.OUT_OF_RESOURCES

    def _store(self, event: evt.Event) -> int:
        """pynetdicom has written the data set to a file in ``storage/.incoming`` as it arrived."""
        calling_ae = event.assoc.requestor.ae_title
        received = Path(event.dataset_path)
        size_mb = received.stat().st_size / 2**20
        if size_mb > self.config.max_instance_mb:
            log.error("refusing an instance from %s: %.0f MB, above max_instance_mb=%d", calling_ae, size_mb, self.config.max_instance_mb)
            self.store.add_refusal(calling_ae, "", "", f"instance of {size_mb:.0f} MB, above max_instance_mb={self.config.max_instance_mb}")
            return StoreStatus.OUT_OF_RESOURCES
        try:
            ds = pydicom.dcmread(received, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, ValueError, KeyError) as exc:
            return self._refuse(calling_ae, "", "", f"data set cannot be parsed: {exc}")
        request = cast(C_STORE, event.request)
        sop_uid = str(getattr(ds, "SOPInstanceUID", "") or request.AffectedSOPInstanceUID or "")
        study_uid = str(getattr(ds, "StudyInstanceUID", "") or "")
        series_uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
        sop_class = str(getattr(ds, "SOPClassUID", "") or request.AffectedSOPClassUID or "")
        invalid = [
            f"{name} {why}"
            for name, uid in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid), ("SOPInstanceUID", sop_uid))
            for ok, why in [valid_uid(uid)]
            if not ok
        ]
        if invalid:
            return self._refuse(calling_ae, study_uid[:64], sop_uid[:64], f"missing or invalid UID in the data set: {'; '.join(invalid)}")
        self.open.touched(id(event.assoc), study_uid)
        if self.store.has_instance(sop_uid):
            log.info("duplicate instance %s acknowledged, not stored again", sop_uid)
            return StoreStatus.SUCCESS
        free_mb = shutil.disk_usage(self.storage).free / 2**20
        if free_mb < self.config.min_free_disk_mb:
            log.error("refusing %s: %.0f MB free, below min_free_disk_mb=%d", sop_uid, free_mb, self.config.min_free_disk_mb)
            self.store.add_refusal(calling_ae, study_uid, sop_uid, f"disk nearly full ({free_mb:.0f} MB free)")
            return StoreStatus.OUT_OF_RESOURCES
        path = self.storage / study_uid / series_uid / f"{sop_uid}.dcm"
        try:
            move_atomically(received, path)
        except OSError as exc:
            log.error("cannot write %s: %s", path, exc)
            self.store.add_refusal(calling_ae, study_uid, sop_uid, f"write failed: {exc}")
            return StoreStatus.OUT_OF_RESOURCES
        self.store.add_instance(sop_uid, study_uid, series_uid, sop_class, path, calling_ae)
        return StoreStatus.SUCCESS

    def _refuse(self, calling_ae: str, study_uid: str, sop_uid: str, reason: str) -> int:
        log.warning("refused an instance from %s (study %s, SOP %s): %s", calling_ae, study_uid or "?", sop_uid or "?", reason)
        self.store.add_refusal(calling_ae, study_uid, sop_uid, reason)
        return StoreStatus.CANNOT_UNDERSTAND
