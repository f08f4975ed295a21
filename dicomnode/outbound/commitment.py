"""Storage Commitment Push Model (PS3.4 J.3), both roles, in one place.

As SCP: a scanner or PACS that sent instances asks the node to take responsibility for them before it deletes its own
copies. An instance is committed only when the node holds it durably and indexed (every stored instance is fsynced
before it is indexed); the others are listed as failures with a reason. The report (N-EVENT-REPORT) goes on the
request's association while it is open; where the requester releases it first (Orthanc does), on a new association
to the requester's address, from ``commitment_peers`` or a destination with its AE title, with SCP/SCU role
selection, retried with backoff.

As SCU: after C-STORE of results to a destination with ``storage_commitment``, the node asks it to commit them on the
same association (:func:`request_commitment`); its report settles each result as delivered, or sends it again
(:func:`record_commitment`). The network side (the N-ACTION and N-EVENT-REPORT on an association) is ``net/services.py``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import UID, generate_uid
from pynetdicom.association import Association
from pynetdicom.sop_class import StorageCommitmentPushModel

from dicomnode.config import DimseDestination, NodeConfig
from dicomnode.net.dimse import REQUEST_STORAGE_COMMITMENT, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
from dicomnode.net.services import CommitmentReport, Unavailable
from dicomnode.outbound.dicom_client import open_association
from dicomnode.outbound.outgoing import Committing, Outgoing, SendOutcome
from dicomnode.outbound.retry import failed_delivery
from dicomnode.store import Store
from dicomnode.store.database import errors
from dicomnode.store.states import DeliveryState

log = logging.getLogger(__name__)

#: PS3.4 J.3.3 Event Type IDs, and the Failure Reasons (PS3.3 C.14.1.1) the node gives.
ALL_COMMITTED, FAILURES_EXIST = 1, 2
NO_SUCH_OBJECT_INSTANCE, CLASS_INSTANCE_CONFLICT, PROCESSING_FAILURE = 0x0112, 0x0119, 0x0110
#: Tries of a report on a new association, the first at once, then after 2, 4, 8 ... seconds.
REPORT_TRIES = 6


def commitment_report(store: Store, calling_ae: str, data: bytes, transfer_syntax: str) -> CommitmentReport | None:
    """The report on the request in ``data`` (an N-ACTION data set): each referenced instance committed where the
    node holds it under that SOP class, else failed; None where the request lacks its Transaction UID or its
    Referenced SOP Sequence."""
    request = read_data_set(data, transfer_syntax)
    if request is None:
        log.warning("storage commitment request from %s cannot be read", calling_ae)
        return None
    syntax = UID(transfer_syntax)
    try:
        transaction = str(request.get("TransactionUID", "") or "")
        referenced = list(request.get("ReferencedSOPSequence", []))
    except Exception as exc:  # noqa: BLE001  # values pydicom cannot decode: a malformed request
        log.warning("storage commitment request from %s cannot be read: %s", calling_ae, exc)
        return None
    if not transaction or not referenced:
        return None
    committed, failed = [], []
    for item in referenced:
        sop_class, sop_uid = str(item.get("ReferencedSOPClassUID", "")), str(item.get("ReferencedSOPInstanceUID", ""))
        held = store.instance_class(sop_uid)
        reason = NO_SUCH_OBJECT_INSTANCE if held is None else CLASS_INSTANCE_CONFLICT if held != sop_class else 0
        if not reason and not all(Path(path).exists() for path in store.paths_of(sop_uid)):
            reason = PROCESSING_FAILURE  # indexed, but its file is gone (retention, or storage lost)
        entry = Dataset()
        entry.ReferencedSOPClassUID, entry.ReferencedSOPInstanceUID = sop_class, sop_uid
        if reason:
            entry.FailureReason = reason
            failed.append(entry)
        else:
            committed.append(entry)
    report = Dataset()
    report.TransactionUID = transaction
    if committed:
        report.ReferencedSOPSequence = committed
    if failed:
        report.FailedSOPSequence = failed
    log.info("storage commitment %s from %s: %d committed, %d failed", transaction, calling_ae, len(committed), len(failed))
    return CommitmentReport(calling_ae, transaction, FAILURES_EXIST if failed else ALL_COMMITTED, _encode(report, syntax), str(syntax))


def read_data_set(data: bytes, transfer_syntax: str) -> Dataset | None:
    """A data set that came in a DIMSE message, decoded in its context's transfer syntax; None where it cannot be."""
    try:
        ds = _decode(data, transfer_syntax)
        ds.get("TransactionUID")  # elements are decoded lazily: fail here, not later
        return ds
    except Exception:  # noqa: BLE001  # a peer's bytes that pydicom cannot read
        return None


def read_report(report: CommitmentReport) -> Dataset:
    """The N-EVENT-REPORT data set of ``report`` (the reader of :func:`commitment_report`)."""
    return _decode(report.encoded, report.transfer_syntax)


def _decode(data: bytes, transfer_syntax: str) -> Dataset:
    syntax = UID(transfer_syntax)
    return read_dataset(BytesIO(data), syntax.is_implicit_VR, syntax.is_little_endian)


def _encode(ds: Dataset, syntax: UID) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = syntax.is_little_endian, syntax.is_implicit_VR
    write_dataset(buffer, ds)
    return buffer.getvalue()


class Commitments:
    """Storage Commitment for the acceptor, both ways: requests from peers that sent instances, answered from the
    index, and reports from destinations on results the node asked them to commit. With the database down, a
    request is answered 0x0213 (resource limitation: ask again later) and a report is refused (the peer may send it
    again); both are logged."""

    def __init__(self, config: NodeConfig, store: Store) -> None:
        self.config, self.store = config, store
        self._database_errors = errors()
        self._reporter = Reporter(config)

    def commit(self, calling_ae: str, data_set: bytes, transfer_syntax: str) -> CommitmentReport | None:
        """The report on a request (:func:`commitment_report`); None where it is malformed; :class:`Unavailable`
        raised where the database does not answer."""
        try:
            return commitment_report(self.store, calling_ae, data_set, transfer_syntax)
        except self._database_errors as exc:
            log.error("storage commitment request from %s not answered: the database does not answer (%s)", calling_ae, exc)
            raise Unavailable("database unavailable, ask again later") from exc

    def report_later(self, report: CommitmentReport) -> None:
        """Send ``report`` on a new association, its request's having ended before the peer acknowledged it."""
        self._reporter.later(report)

    def commitment_reported(self, calling_ae: str, event_type: int, data_set: bytes, transfer_syntax: str) -> bool:
        """Record a destination's report on what it committed; False where it cannot be read or recorded."""
        report = read_data_set(data_set, transfer_syntax)
        if report is None or "TransactionUID" not in report:
            log.warning("a storage commitment report from %s cannot be read", calling_ae)
            return False
        try:
            record_commitment(self.config, self.store, calling_ae, report)
        except self._database_errors as exc:
            log.error("storage commitment report from %s not recorded: the database does not answer (%s)", calling_ae, exc)
            return False
        return True


class Reporter:
    """Sends reports on new associations, one thread per report, each tried ``REPORT_TRIES`` times."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config

    def later(self, report: CommitmentReport) -> None:
        threading.Thread(target=self._send, args=(report,), name="commitment-report", daemon=True).start()

    def address(self, ae_title: str) -> tuple[str, int] | None:
        """The requester's address: a ``commitment_peers`` entry, else a DIMSE destination with its AE title."""
        peers = [(p.ae_title, p.host, p.port) for p in self.config.commitment_peers]
        peers += [(d.ae_title, d.host, d.port) for d in self.config.destinations if isinstance(d, DimseDestination)]
        return next(((host, port) for title, host, port in peers if title == ae_title and host and port), None)

    def _send(self, report: CommitmentReport) -> None:
        address = self.address(report.calling_ae)
        if address is None:
            log.error(
                "storage commitment %s: no address for %s in commitment_peers or destinations; report not sent", report.transaction_uid, report.calling_ae
            )
            return
        for attempt in range(REPORT_TRIES):
            outcome = self._try(report, address)
            if not outcome:
                log.info("storage commitment %s reported to %s at %s:%d", report.transaction_uid, report.calling_ae, *address)
                return
            log.warning(
                "storage commitment %s: report to %s failed (%s), try %d of %d", report.transaction_uid, report.calling_ae, outcome, attempt + 1, REPORT_TRIES
            )
            time.sleep(2 ** (attempt + 1))
        log.error("storage commitment %s: report to %s given up after %d tries", report.transaction_uid, report.calling_ae, REPORT_TRIES)

    def _try(self, report: CommitmentReport, address: tuple[str, int]) -> str:
        """Send once; "" on success, else why not."""
        contexts = [(STORAGE_COMMITMENT, [report.transfer_syntax])]
        assoc = open_association(self.config, address, report.calling_ae, contexts, scp_roles=[STORAGE_COMMITMENT])
        if not assoc.is_established:
            return "association rejected" if assoc.is_rejected else "no association"
        try:
            status, _ = assoc.send_n_event_report(read_report(report), report.event_type, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE)
            code = getattr(status, "Status", None)
            return "" if code == 0 else f"status {code}" if code is not None else "no N-EVENT-REPORT-RSP (timeout or abort)"
        finally:
            assoc.release()


def request_commitment(
    assoc: Association, datasets: Sequence[Outgoing], stored: list[int], outcomes: list[SendOutcome], committing: Committing | None
) -> str | None:
    """Ask the destination to commit the ``stored`` datasets (N-ACTION, PS3.4 J.3.2); its Transaction UID, or None
    where it refused, after marking those outcomes failed."""
    request = Dataset()
    request.TransactionUID = generate_uid()
    request.ReferencedSOPSequence = []
    for n in stored:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = datasets[n].sop_class, datasets[n].sop_instance
        request.ReferencedSOPSequence.append(item)
    if committing is not None:
        committing(str(request.TransactionUID), stored)
    status, _ = assoc.send_n_action(request, REQUEST_STORAGE_COMMITMENT, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE)
    code = getattr(status, "Status", None)
    if code == 0:
        return str(request.TransactionUID)
    why = f"stored, but the storage commitment request was refused ({'no answer' if code is None else f'status 0x{code:04X}'})"
    for n in stored:
        outcomes[n] = SendOutcome(False, why)
    return None


def record_commitment(config: NodeConfig, store: Store, calling_ae: str, report: Dataset) -> int:
    """A destination's storage commitment report (N-EVENT-REPORT): what it committed is delivered, what it did not
    is sent again (or parked after the last try); returns how many it committed."""
    transaction = str(report.get("TransactionUID", ""))
    committed = {str(i.ReferencedSOPInstanceUID) for i in report.get("ReferencedSOPSequence", [])}
    failed = {str(i.ReferencedSOPInstanceUID): int(i.get("FailureReason", 0)) for i in report.get("FailedSOPSequence", [])}
    titles = {d.name: d.ae_title for d in config.destinations if isinstance(d, DimseDestination)}
    now, count = store.now(), 0
    waiting = store.committing(transaction)
    if not waiting:
        log.warning("storage commitment report %s from %s names no delivery awaiting it: ignored", transaction, calling_ae)
    for record in waiting:
        if titles.get(record.destination) != calling_ae:
            log.warning("storage commitment %s reported by %s, not by %s's AE title: ignored", transaction, calling_ae, record.destination)
            continue
        if record.sop_uid in committed:
            store.update_delivery(record.id, DeliveryState.SENT, record.attempts, record.next_attempt_at, None)
            count += 1
        elif record.sop_uid in failed:
            failed_delivery(config, store, record, now, f"{record.destination} did not commit it (failure reason 0x{failed[record.sop_uid]:04X})")
        else:
            failed_delivery(config, store, record, now, f"{record.destination}'s commitment report does not name it")
    log.info("storage commitment %s from %s: %d committed, %d failed", transaction, calling_ae, count, len(failed))
    return count
