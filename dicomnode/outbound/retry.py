"""What becomes of a result a destination did not take: sent again after an exponential backoff, or parked (dead)
after the last try, until ``dicomnode retry``."""

from __future__ import annotations

import logging

from dicomnode.config import Delivery, NodeConfig
from dicomnode.store import DeliveryRecord, Store
from dicomnode.store.states import DeliveryState

log = logging.getLogger(__name__)


def backoff(policy: Delivery, attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failed tries: exponential, capped."""
    return min(policy.backoff_s * 2 ** max(attempts - 1, 0), policy.max_backoff_s)


def failed_delivery(config: NodeConfig, store: Store, record: DeliveryRecord, now: float, detail: str, final: bool = False) -> None:
    """Record a failed try of ``record`` (``detail`` says why): queued again after :func:`backoff`, or parked after
    ``delivery.max_attempts`` tries or where ``final``."""
    attempts = record.attempts + 1
    if final or attempts >= config.delivery.max_attempts:
        log.error("parking %s of job %d for %s after %d tries: %s", record.sop_uid, record.job_id, record.destination, attempts, detail)
        store.update_delivery(record.id, DeliveryState.DEAD, attempts, record.next_attempt_at, detail)
        return
    wait = backoff(config.delivery, attempts)
    log.warning("sending %s to %s failed (%s); try %d again in %.0f s", record.sop_uid, record.destination, detail, attempts + 1, wait)
    store.update_delivery(record.id, DeliveryState.QUEUED, attempts, now + wait, detail)
