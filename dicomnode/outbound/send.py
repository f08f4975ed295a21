"""Send stage: the results queued for each destination sent by its protocol's sender, with retries and backoff; parked
(dead) after the last try; a destination's storage commitment report settles what it committed."""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicomnode.config import Delivery, DimseDestination, NodeConfig
from dicomnode.options import Protocol
from dicomnode.outbound import dimse, stow
from dicomnode.outbound.outgoing import Outgoing, Sender
from dicomnode.store.records import DeliveryRecord, Store
from dicomnode.store.states import DeliveryState

log = logging.getLogger(__name__)


#: Each protocol's sender (``outbound/outgoing.Sender``), looked up by a destination's ``protocol``.
SENDERS: dict[Protocol, Sender] = {Protocol.DIMSE: dimse.send, Protocol.STOW_RS: stow.send}


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

        outcomes, transaction = SENDERS[Protocol(destination.protocol)](config, destination, datasets, committing) if datasets else ([], None)
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


def _failed(config: NodeConfig, store: Store, record: DeliveryRecord, now: float, detail: str, final: bool = False) -> None:
    attempts = record.attempts + 1
    if final or attempts >= config.delivery.max_attempts:
        log.error("parking %s of job %d for %s after %d tries: %s", record.sop_uid, record.job_id, record.destination, attempts, detail)
        store.update_delivery(record.id, DeliveryState.DEAD, attempts, record.next_attempt_at, detail)
        return
    wait = backoff(config.delivery, attempts)
    log.warning("sending %s to %s failed (%s); try %d again in %.0f s", record.sop_uid, record.destination, detail, attempts + 1, wait)
    store.update_delivery(record.id, DeliveryState.QUEUED, attempts, now + wait, detail)
