"""Send stage: the results queued for each destination sent by its protocol's sender, with retries and backoff
(``retry.py``); parked (dead) after the last try."""

from __future__ import annotations

import logging

from pydicom.errors import InvalidDicomError

from dicomnode.config import NodeConfig
from dicomnode.options import Protocol
from dicomnode.outbound import c_store, stow
from dicomnode.outbound.outgoing import Outgoing, Sender
from dicomnode.outbound.retry import failed_delivery
from dicomnode.store import DeliveryRecord, Store
from dicomnode.store.states import DeliveryState

log = logging.getLogger(__name__)


#: Each protocol's sender (``outbound/outgoing.Sender``), looked up by a destination's ``protocol``.
SENDERS: dict[Protocol, Sender] = {Protocol.DIMSE: c_store.send, Protocol.STOW_RS: stow.send}


def send_due(config: NodeConfig, store: Store, now: float | None = None, sender: str = "local") -> int:
    """Try every queued delivery that is due, grouped per destination, claimed for this sender (others in a cluster
    skip them); returns how many were sent."""
    now = store.now() if now is None else now
    for record in store.committing(overdue_at=now):
        failed_delivery(
            config, store, record, now, f"no storage commitment report within delivery.commitment_timeout_s={config.delivery.commitment_timeout_s:g}"
        )
    due = store.claim_deliveries(sender, now, lease_s=4 * config.delivery.timeout_s + 60)
    destinations = {d.name: d for d in config.destinations}
    sent = 0
    for name in sorted({d.destination for d in due}):
        batch = [d for d in due if d.destination == name]
        destination = destinations.get(name)
        if destination is None:
            for record in batch:
                failed_delivery(config, store, record, now, f"destination {name!r} is no longer configured", final=True)
            continue
        readable, datasets = [], []
        for record in batch:
            try:
                datasets.append(Outgoing.of(record.path))
                readable.append(record)
            except (OSError, InvalidDicomError) as exc:
                failed_delivery(config, store, record, now, f"result file unreadable: {exc}", final=True)

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
                failed_delivery(config, store, record, now, outcome.detail)
    return sent
