"""Send stage: C-STORE results to each destination, with retries and backoff; parked (dead) after the last try."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import StorageCommitmentPushModel
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, STORAGE_SERVICE_CLASS_STATUS, code_to_category

from dicomnode.base.tls import dicom_client_context
from dicomnode.config import Delivery, Destination, NodeConfig
from dicomnode.net.dimse import REQUEST_STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
from dicomnode.options import Protocol
from dicomnode.outbound.stow import stow_rs
from dicomnode.store.records import DeliveryRecord, Store
from dicomnode.store.states import DeliveryState, SendOutcome

log = logging.getLogger(__name__)


#: Called with a Transaction UID and the indices of the datasets stored, before the commitment request is sent.
Committing = Callable[[str, list[int]], None]


@dataclass(frozen=True)
class Outgoing:
    """A result file to send, named by its File Meta Information; its dataset is sent as the file holds it."""

    path: Path
    sop_class: str
    sop_instance: str
    transfer_syntax: str

    @classmethod
    def of(cls, path: Path) -> Outgoing:
        """The file at ``path``, from its File Meta Information alone; InvalidDicomError or OSError where it has none."""
        meta = read_file_meta_info(path)
        try:
            return cls(path, str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID), str(meta.TransferSyntaxUID))
        except AttributeError as exc:
            raise InvalidDicomError(f"incomplete File Meta Information: {exc}") from exc


def store_scu(
    config: NodeConfig, destination: Destination, datasets: Sequence[Outgoing], committing: Committing | None = None
) -> tuple[list[SendOutcome], str | None]:
    """Send result files over one association; one outcome per file, and, for a destination with
    ``storage_commitment``, the Transaction UID of the commitment it was asked for those it stored (None if none),
    after ``committing`` recorded it (the report may come before the request's answer).

    Each dataset is sent from its file as it is encoded there, never decoded and encoded again (pynetdicom's
    documented STORE_SEND_CHUNKED_DATASET option): a thin-slice study's SR has some 7,000 content items, which took
    2 s to parse and encode again. The presentation context proposed for each is its file's own transfer syntax."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=config.ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = config.delivery.timeout_s
    for sop_class, syntax in {(ds.sop_class, ds.transfer_syntax) for ds in datasets}:
        ae.add_requested_context(sop_class, [syntax])
    if destination.storage_commitment:
        ae.add_requested_context(StorageCommitmentPushModel)
    tls_args = None
    if destination.tls:
        tls_args = (dicom_client_context(config), None)  # peers are identified by the CA, not by host name (wrap_socket takes None)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args)  # type: ignore[arg-type]
    if not assoc.is_established:
        reason = "association rejected" if assoc.is_rejected else "no association (peer down or unreachable)"
        return [SendOutcome(False, reason)] * len(datasets), None
    outcomes, transaction = [], None
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds.path)
            code = getattr(status, "Status", None)
            if code is None:
                outcomes.append(SendOutcome(False, "no C-STORE response (timeout or abort)"))
            else:
                category, meaning = STORAGE_SERVICE_CLASS_STATUS.get(code, (code_to_category(code), "no meaning defined"))
                ok = category in (STATUS_SUCCESS, STATUS_WARNING)  # a warning (e.g. coercion) still means stored
                outcomes.append(SendOutcome(ok, f"status 0x{code:04X} ({': '.join(filter(None, (category, meaning)))})"))
        stored = [n for n, outcome in enumerate(outcomes) if outcome.ok]
        if destination.storage_commitment and stored:
            transaction = _request_commitment(assoc, datasets, stored, outcomes, committing)
    finally:
        assoc.release()
    return outcomes, transaction


def _request_commitment(
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
    titles = {d.name: d.ae_title for d in config.destinations}
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
            _failed(config, store, record, now, f"{record.destination} did not commit it (failure reason 0x{failed[record.sop_uid]:04X})")
        else:
            _failed(config, store, record, now, f"{record.destination}'s commitment report does not name it")
    log.info("storage commitment %s from %s: %d committed, %d failed", transaction, calling_ae, count, len(failed))
    return count


def backoff(policy: Delivery, attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failed tries: exponential, capped."""
    return min(policy.backoff_s * 2 ** max(attempts - 1, 0), policy.max_backoff_s)


def send_due(config: NodeConfig, store: Store, now: float | None = None, sender: str = "local") -> int:
    """Try every queued delivery that is due, grouped per destination, claimed for this sender (others in a cluster
    skip them); returns how many were sent."""
    now = store.now() if now is None else now
    for record in store.committing(overdue_at=now):
        _failed(config, store, record, now, f"no storage commitment report within delivery.commitment_timeout_s={config.delivery.commitment_timeout_s:g}")
    due = store.claim_deliveries(sender, now, lease_s=4 * config.delivery.timeout_s + 60)
    destinations = {d.name: d for d in config.destinations}
    sent = 0
    for name in sorted({d.destination for d in due}):
        batch = [d for d in due if d.destination == name]
        destination = destinations.get(name)
        if destination is None:
            for record in batch:
                _failed(config, store, record, now, f"destination {name!r} is no longer configured", final=True)
            continue
        readable, datasets = [], []
        for record in batch:
            try:
                datasets.append(Outgoing.of(record.path))
                readable.append(record)
            except (OSError, InvalidDicomError) as exc:
                _failed(config, store, record, now, f"result file unreadable: {exc}", final=True)

        def committing(transaction: str, stored: list[int], batch: list[DeliveryRecord] = readable, name: str = name) -> None:
            records = [batch[n] for n in stored]
            deadline = now + config.delivery.commitment_timeout_s
            store.await_commitment([r.id for r in records], transaction, {r.id: r.attempts + 1 for r in records}, deadline)
            log.info("%d results stored by %s, commitment %s asked for", len(records), name, transaction)

        outcomes, transaction = _send(config, destination, readable, datasets, committing) if datasets else ([], None)
        if transaction is not None:
            sent += sum(o.ok for o in outcomes)
        for record, outcome in zip(readable, outcomes):
            if outcome.ok and transaction is not None:
                continue
            if outcome.ok:
                store.update_delivery(record.id, DeliveryState.SENT, record.attempts + 1, record.next_attempt_at, None)
                log.info("sent %s of job %d to %s (%s)", record.sop_uid, record.job_id, name, outcome.detail)
                sent += 1
            else:
                _failed(config, store, record, now, outcome.detail)
    return sent


def _send(
    config: NodeConfig, destination: Destination, records: list[DeliveryRecord], datasets: Sequence[Outgoing], committing: Committing
) -> tuple[list[SendOutcome], str | None]:
    if destination.protocol is Protocol.STOW_RS:
        return stow_rs(config, destination, [r.path for r in records], [r.sop_uid for r in records]), None
    return store_scu(config, destination, datasets, committing)


def _failed(config: NodeConfig, store: Store, record: DeliveryRecord, now: float, detail: str, final: bool = False) -> None:
    attempts = record.attempts + 1
    if final or attempts >= config.delivery.max_attempts:
        log.error("parking %s of job %d for %s after %d tries: %s", record.sop_uid, record.job_id, record.destination, attempts, detail)
        store.update_delivery(record.id, DeliveryState.DEAD, attempts, record.next_attempt_at, detail)
        return
    wait = backoff(config.delivery, attempts)
    log.warning("sending %s to %s failed (%s); try %d again in %.0f s", record.sop_uid, record.destination, detail, attempts + 1, wait)
    store.update_delivery(record.id, DeliveryState.QUEUED, attempts, now + wait, detail)
