"""Receive stage: the node's SCP for C-ECHO, C-STORE and Storage Commitment (``net/acceptor.py`` speaks DICOM,
``net/data_set.py`` checks each data set, ``outbound/commitment.py`` answers commitment, handed in by the service); what it accepts is stored
atomically and indexed here."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
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

from dicomnode.base.files import free_mb, move_into_place, remove_partial_writes
from dicomnode.base.locks import KeyedLocks
from dicomnode.base.tls import receiver_context
from dicomnode.config import NodeConfig
from dicomnode.measured import Patient
from dicomnode.net.acceptor import Acceptor
from dicomnode.net.association import Policy
from dicomnode.net.data_set import MAX_UID_LENGTH, Identity, Refusal, parse_data_set, refusal
from dicomnode.net.dimse import STORAGE_COMMITMENT, StoreStatus
from dicomnode.net.services import CommitmentServices, Received
from dicomnode.store import Job, NewCorrection, Store, StudyBusy
from dicomnode.store.database import errors
from dicomnode.store.open_associations import OpenAssociations

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

#: The classes the node processes, never one of its results.
SOURCE_CLASSES = (CTImageStorage, EnhancedCTImageStorage)

#: What the receiver accepts, abstract syntax -> its transfer syntaxes (``docs/conformance.md`` lists them; its test
#: proposes each to the receiver): storage classes in every transfer syntax pynetdicom knows, Verification and
#: Storage Commitment in the two uncompressed little-endian ones.
ACCEPTED_CONTEXTS: dict[str, tuple[str, ...]] = {c: (ImplicitVRLittleEndian, ExplicitVRLittleEndian) for c in (Verification, STORAGE_COMMITMENT)} | {
    c: tuple(ALL_TRANSFER_SYNTAXES) for c in ACCEPTED_SOP_CLASSES
}

#: The elements read from a received header (a header cut short or broken shows as a missing or invalid UID).
INDEXED_TAGS = ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"]
#: Folder under ``storage`` where data sets are written while they arrive.
INCOMING = ".incoming"


@dataclass(frozen=True)
class Taken:
    """A SEG taken as a reader's correction: the job whose result it corrects, who made it and when."""

    corrects: Job
    reader: str
    created: str
    patient: Patient


#: The check of a received SEG (its file, its UIDs), handed in by the service: a correction to take, a refusal, or
#: None where it is no correction (of a study the node measured nothing of).
CorrectionCheck = Callable[[Path, Identity], "Taken | Refusal | None"]


class Receiver:
    """The node's SCP: stores what it accepts under ``storage/<study>/<series>/<sop>.dcm``."""

    def __init__(
        self, config: NodeConfig, store: Store, open_associations: OpenAssociations, commitments: CommitmentServices, corrections: CorrectionCheck | None = None
    ) -> None:
        self._database_errors = errors()
        self.config = config
        self.store = store
        self.open = open_associations
        self.storage = config.path(config.storage)
        self.storage.mkdir(parents=True, exist_ok=True)
        self.corrections = corrections
        for partial in remove_partial_writes(self.storage):
            log.warning("removed %s, left by a write that was cut off", partial)
        if store.db.dialect.name == "sqlite":
            self.reindex()
        self._acceptor: Acceptor | None = None
        self._instances = KeyedLocks()
        self.commitments = commitments

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
            identity = Identity.of(ds)
            if self.corrections is not None and identity.sop_class == SegmentationStorage and self._recovered_correction(path, identity):
                recovered += 1
            elif self.store.add_instance(str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPClassUID), path, "(recovered)"):
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

    def _recovered_correction(self, path: Path, identity: Identity) -> bool:
        """A SEG in storage that the index lost: taken as the correction it was, True; False where it is none (indexed
        as an instance then). One that is refused now, or whose study is busy, is removed, with a warning."""
        assert self.corrections is not None
        taken = self.corrections(path, identity)
        if taken is None:
            return False
        if isinstance(taken, Refusal):
            log.warning("removed %s, a SEG the index had lost: %s", path, taken.reason)
            path.unlink(missing_ok=True)
            return True
        try:
            self._add_correction(identity, path, "(recovered)", taken)
        except StudyBusy as exc:
            log.warning("removed %s, a SEG the index had lost: %s", path, exc)
        return True

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
        self._acceptor = Acceptor((self.config.host, self.config.port), policy, self, self.commitments)
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
            return self._refuse(calling_ae, Identity("", "", "", ""), Refusal(f"data set cannot be parsed: {broken}", "data set cannot be parsed"))
        identity = Identity.of(ds)
        refused = refusal(identity, broken, received.sop_class_uid, received.sop_instance_uid)
        if refused is not None:
            return self._refuse(calling_ae, identity, refused)
        study_uid, sop_uid = identity.study_uid, identity.sop_uid
        self.open.touched(received.association, study_uid)
        with self._instances.hold(sop_uid):  # the same instance from two associations at once: one after the other
            return self._store_new(received, identity)

    def _store_new(self, received: Received, identity: Identity) -> tuple[int, str]:
        calling_ae, study_uid, sop_uid = received.calling_ae, identity.study_uid, identity.sop_uid
        if self.store.has_instance(sop_uid):
            log.info("duplicate instance %s acknowledged, not stored again", sop_uid)
            return StoreStatus.SUCCESS, ""
        if identity.sop_class not in SOURCE_CLASSES and self.store.is_own_result(sop_uid):  # stored, it would start a new run of its study
            log.info("instance %s acknowledged, not stored: the node's own result, sent back", sop_uid)
            return StoreStatus.SUCCESS, ""
        free = free_mb(self.storage)
        if free < self.config.min_free_disk_mb:
            log.error("refusing %s: %.0f MB free, below min_free_disk_mb=%d", sop_uid, free, self.config.min_free_disk_mb)
            self.store.add_refusal(calling_ae, study_uid, sop_uid, f"disk nearly full ({free:.0f} MB free)")
            return StoreStatus.OUT_OF_RESOURCES, "disk nearly full"
        taken = self.corrections(received.path, identity) if self.corrections is not None and identity.sop_class == SegmentationStorage else None
        if isinstance(taken, Refusal):
            return self._refuse(calling_ae, identity, taken)
        path = self.storage / study_uid / identity.series_uid / f"{sop_uid}.dcm"
        try:
            received.durable.result()
            move_into_place(received.path, path)
        except OSError as exc:
            log.error("cannot write %s: %s", path, exc)
            self.store.add_refusal(calling_ae, study_uid, sop_uid, f"write failed: {exc}")
            return StoreStatus.OUT_OF_RESOURCES, "write failed"
        if taken is not None:
            return self._take_correction(received, identity, path, taken)
        if not self.store.add_instance(sop_uid, study_uid, identity.series_uid, identity.sop_class, path, calling_ae):
            # indexed meanwhile by another receiver of the cluster, maybe in another series: keep one copy, the indexed one
            if str(path) not in self.store.paths_of(sop_uid):
                path.unlink(missing_ok=True)
            log.info("duplicate instance %s acknowledged: another receiver stored it first", sop_uid)
        return StoreStatus.SUCCESS, ""

    def _take_correction(self, received: Received, identity: Identity, path: Path, taken: Taken) -> tuple[int, str]:
        """Index a reader's SEG with its correction job; a study whose result is about to change refuses it (the
        sender may send it again once the new result is out)."""
        try:
            job = self._add_correction(identity, path, received.calling_ae, taken)
        except StudyBusy as exc:
            refused = Refusal(f"not taken as a correction: {exc}", "study being processed again, send later", StoreStatus.OUT_OF_RESOURCES)
            return self._refuse(received.calling_ae, identity, refused)
        if job is None:  # indexed meanwhile by another receiver of the cluster
            log.info("duplicate instance %s acknowledged: another receiver stored it first", identity.sop_uid)
        return StoreStatus.SUCCESS, ""

    def _add_correction(self, identity: Identity, path: Path, calling_ae: str, taken: Taken) -> Job | None:
        """Index the SEG at ``path`` with its correction job; where nothing is indexed (busy, a database error, another
        receiver first), its file goes unless it is the one indexed, so that no SEG is found later as an instance no
        job covers."""
        new = NewCorrection(
            identity.sop_uid,
            identity.study_uid,
            identity.series_uid,
            identity.sop_class,
            path,
            calling_ae,
            taken.corrects,
            taken.reader,
            taken.created,
            taken.patient,
        )
        job = None
        try:
            job = self.store.add_correction(new)
        finally:
            if job is None and str(path) not in self.store.paths_of(identity.sop_uid):
                path.unlink(missing_ok=True)
        if job is not None:
            reader = taken.reader or "an unnamed reader"
            log.info(
                "study %s: SEG %s from %s by %s taken as a correction of job %d: job %d",
                identity.study_uid,
                identity.sop_uid,
                calling_ae,
                reader,
                taken.corrects.id,
                job.id,
            )
        return job

    def _refuse(self, calling_ae: str, identity: Identity, refused: Refusal) -> tuple[int, str]:
        """The refusal's status and Error Comment; its whole reason is logged and recorded."""
        study_uid, sop_uid = identity.study_uid[:MAX_UID_LENGTH], identity.sop_uid[:MAX_UID_LENGTH]
        log.warning("refused an instance from %s (study %s, SOP %s): %s", calling_ae, study_uid or "?", sop_uid or "?", refused.reason)
        self.store.add_refusal(calling_ae, study_uid, sop_uid, refused.reason)
        return refused.status, refused.comment
