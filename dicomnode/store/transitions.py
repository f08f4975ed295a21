"""The one place each of a job's states changes (processing, delivery), and the SQL that tells results from
rejection notes; called inside the transactions of the store's parts."""

from __future__ import annotations

import json

from dicomnode.store.database import Session
from dicomnode.store.states import DeliveryState, JobKind, JobState, Outcome, job_delivery

#: Deliveries that are rejection notes (IHE IOCM): never superseded, never rejected, sent before results.
NOTES = "SELECT note_sop_uid FROM rejections WHERE note_sop_uid != ''"
#: A delivery ``d`` of a result (not a note) that was sent and that no rejection note names yet.
UNREJECTED_SENT = "d.state = 'sent' AND NOT EXISTS (SELECT 1 FROM rejections r WHERE r.delivery_id = d.id) AND d.sop_uid NOT IN (" + NOTES + ")"


def supersedes(later: str, earlier: str) -> str:
    """SQL: a done job ``later`` replaces the results of an earlier version ``earlier`` of its study (aliases of
    ``jobs``). Versions of one kind replace each other: the model's results a later model run (whatever its outcome:
    the node no longer stands by them), a reader's correction an earlier correction, once it gave a result. A
    correction replaces the model's results too where the site withdrew them when it was taken
    (``corrections.withdraw_model_results``); the model never replaces a reader's correction."""
    correction, result = JobKind.CORRECTION.value, Outcome.RESULT.value
    withdraws = f"EXISTS (SELECT 1 FROM corrections c WHERE c.job_id = {later}.id AND c.withdraws = 1)"
    return (
        f"({later}.kind != '{correction}' AND {earlier}.kind = {later}.kind"
        f" OR {later}.kind = '{correction}' AND {later}.outcome = '{result}' AND ({earlier}.kind = {later}.kind OR {withdraws}))"
    )


def waiting_for_note() -> str:
    """SQL, for a queued delivery ``q``: an earlier version of its study that its job replaces sent a result to its
    destination that no note names yet."""
    return (
        "SELECT 1 FROM deliveries d JOIN jobs e ON e.id = d.job_id JOIN jobs jq ON jq.id = q.job_id"
        " WHERE d.destination = q.destination AND e.study_uid = jq.study_uid AND e.version < jq.version AND "
        + supersedes("jq", "e")
        + " AND "
        + UNREJECTED_SENT
    )


def move(tx: Session, job_id: int, before: tuple[JobState, ...], after: JobState, **values: object) -> None:
    """The one place a job's processing state changes; raises ValueError if the job is not in ``before``."""
    encoded = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in values.items()}
    encoded.update(state=after.value)
    columns = ", ".join(f"{k} = ?" for k in encoded) + ", updated_at = {now}"
    allowed = ", ".join("?" for _ in before)
    changed = tx.execute(f"UPDATE jobs SET {columns} WHERE id = ? AND state IN ({allowed})", (*encoded.values(), job_id, *(s.value for s in before)))
    if changed != 1:
        raise ValueError(f"job_id: job {job_id} is not {' or '.join(s.value for s in before)}, so it cannot become {after.value}")


def supersede_earlier(tx: Session, job_id: int) -> None:
    """What earlier versions of the job's study that it replaces (:func:`supersedes`) queued or parked, and has not
    been sent, is not sent any more."""
    rows = tx.query(
        "UPDATE deliveries SET state = ?, claimed_by = NULL, claimed_until = NULL, updated_at = {now} WHERE state IN (?, ?)"
        " AND sop_uid NOT IN ("
        + NOTES
        + ") AND job_id IN (SELECT e.id FROM jobs e JOIN jobs j ON j.study_uid = e.study_uid WHERE j.id = ? AND e.version < j.version AND "
        + supersedes("j", "e")
        + ")"
        " RETURNING job_id",
        (DeliveryState.SUPERSEDED.value, DeliveryState.QUEUED.value, DeliveryState.DEAD.value, job_id),
    )
    for earlier in {r["job_id"] for r in rows}:
        settle(tx, earlier)


def settle(tx: Session, job_id: int) -> None:
    """The one place a job's delivery progress changes: derived from its delivery rows."""
    states = {DeliveryState(r["state"]) for r in tx.query("SELECT DISTINCT state FROM deliveries WHERE job_id = ?", (job_id,))}
    tx.execute("UPDATE jobs SET delivery = ?, updated_at = {now} WHERE id = ?", (job_delivery(states).value, job_id))
