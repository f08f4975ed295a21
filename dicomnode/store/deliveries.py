"""Result files to send: claimed by a sender, their attempts, Storage Commitment, and rejection notes for results superseded."""

from __future__ import annotations

from dicomnode.store.database import Database, Session
from dicomnode.store.records import DeliveryRecord, Queued, Superseded, delivery_from
from dicomnode.store.states import DeliveryState, JobKind
from dicomnode.store.transitions import NOTES, UNREJECTED_SENT, settle, supersedes, waiting_for_note


class _AlreadyNamed(Exception):
    """Another sender queued a rejection note for one of these deliveries first."""


class Deliveries:
    """Result files to send: claimed by a sender, their attempts, Storage Commitment, and rejection notes for results superseded."""

    db: Database

    def release_delivery_claims(self) -> int:
        """Drop every sender's claims (the embedded node at start: the only sender was the process that died)."""
        return self.db.execute("UPDATE deliveries SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by IS NOT NULL")

    def claim_deliveries(self, sender: str, now: float, lease_s: float, limit: int = 200) -> list[DeliveryRecord]:
        """Queued deliveries due at ``now``, claimed by ``sender`` for ``lease_s`` seconds of the database's clock so
        that no other sender tries them meanwhile; recording an attempt (:meth:`update_delivery`) ends the claim.
        Rejection notes come first; a result waits while an earlier version's result sent to its destination has no
        rejection note queued yet."""
        with self.db.transaction() as tx:
            rows = tx.query(
                "UPDATE deliveries SET claimed_by = ?, claimed_until = {now} + ? WHERE id IN ("
                "SELECT q.id FROM deliveries q WHERE q.state = ? AND q.next_attempt_at <= ? AND (q.claimed_until IS NULL OR q.claimed_until < {now})"
                " AND (q.sop_uid IN (" + NOTES + ") OR NOT EXISTS (" + waiting_for_note() + "))"
                " ORDER BY q.id LIMIT ?{skip_locked}) RETURNING *",
                (sender, lease_s, DeliveryState.QUEUED.value, now, limit),
            )
            notes = {r["note_sop_uid"] for r in tx.query(NOTES)} if rows else set()
        return sorted((delivery_from(r) for r in rows), key=lambda d: (d.sop_uid not in notes, d.id))

    def superseded_sent(self) -> list[Superseded]:
        """Results sent to a destination that a later version of their study done since replaces (``supersedes``),
        and that no rejection note names yet, each with the latest such version (the one whose note will reject it)."""
        rows = self.db.query(
            "SELECT d.*, j.study_uid, j.version AS rejected_version, k.id AS by_job, k.version AS by_version, k.kind AS by_kind FROM deliveries d"
            " JOIN jobs j ON j.id = d.job_id"
            " JOIN jobs k ON k.id = (SELECT x.id FROM jobs x WHERE x.study_uid = j.study_uid AND x.state = 'done' AND x.version > j.version AND "
            + supersedes("x", "j")
            + " ORDER BY x.version DESC LIMIT 1)"
            " WHERE " + UNREJECTED_SENT + " ORDER BY d.id"
        )
        return [Superseded(delivery_from(r), r["study_uid"], r["rejected_version"], r["by_job"], r["by_version"], JobKind(r["by_kind"])) for r in rows]

    def queue_rejection(self, job_id: int, destination: str, note: Queued | None, rejected: list[int]) -> bool:
        """Queue the rejection ``note`` (as a delivery of ``job_id``) for the sent deliveries ``rejected``, or, with
        no note (their files are gone), record that none can be sent; False, with nothing changed, when another
        sender named any of them first."""
        try:
            with self.db.transaction() as tx:
                self._name_rejected(tx, job_id, destination, note, rejected)
        except _AlreadyNamed:
            return False
        return True

    @staticmethod
    def _name_rejected(tx: Session, job_id: int, destination: str, note: Queued | None, rejected: list[int]) -> None:
        uid = note.sop_uid if note is not None else ""
        named = tx.query(
            "INSERT INTO rejections (delivery_id, note_sop_uid, created_at) VALUES "
            + ", ".join("(?, ?, {now})" for _ in rejected)
            + " ON CONFLICT DO NOTHING RETURNING delivery_id",
            [value for delivery_id in rejected for value in (delivery_id, uid)],
        )
        if len(named) != len(rejected):
            raise _AlreadyNamed
        if note is not None:
            tx.execute(
                "INSERT INTO deliveries (job_id, destination, path, sop_uid, state, next_attempt_at, updated_at) VALUES (?, ?, ?, ?, ?, {now}, {now})",
                (job_id, destination, str(note.path), note.sop_uid, DeliveryState.QUEUED.value),
            )
            settle(tx, job_id)

    def await_commitment(self, delivery_ids: list[int], transaction_uid: str, attempts: dict[int, int], deadline: float) -> None:
        """Deliveries stored by their destination, which was asked to commit them in ``transaction_uid``: committing
        until its report comes or ``deadline`` passes."""
        with self.db.transaction() as tx:
            for delivery_id in delivery_ids:
                tx.execute(
                    "INSERT INTO commitment_requests (delivery_id, transaction_uid) VALUES (?, ?)"
                    " ON CONFLICT (delivery_id) DO UPDATE SET transaction_uid = excluded.transaction_uid",
                    (delivery_id, transaction_uid),
                )
                rows = tx.query(
                    "UPDATE deliveries SET state = CASE WHEN state = ? THEN state ELSE ? END, attempts = ?, next_attempt_at = ?, last_error = NULL,"
                    " claimed_by = NULL, claimed_until = NULL, updated_at = {now} WHERE id = ? RETURNING job_id",
                    (DeliveryState.SUPERSEDED.value, DeliveryState.COMMITTING.value, attempts[delivery_id], deadline, delivery_id),
                )
                settle(tx, rows[0]["job_id"])

    def committing(self, transaction_uid: str | None = None, overdue_at: float | None = None) -> list[DeliveryRecord]:
        """Deliveries awaiting a commitment report: those of ``transaction_uid``, or those whose deadline passed by
        ``overdue_at``."""
        query = "SELECT d.* FROM deliveries d JOIN commitment_requests c ON c.delivery_id = d.id WHERE d.state = ?"
        params: list[object] = [DeliveryState.COMMITTING.value]
        if transaction_uid is not None:
            query, params = query + " AND c.transaction_uid = ?", [*params, transaction_uid]
        if overdue_at is not None:
            query, params = query + " AND d.next_attempt_at <= ?", [*params, overdue_at]
        return [delivery_from(r) for r in self.db.query(query + " ORDER BY d.id", params)]

    def rejection_notes(self) -> set[str]:
        """SOP Instance UIDs of every rejection note queued."""
        return {r["note_sop_uid"] for r in self.db.query(NOTES)}

    def deliveries(self, job_id: int) -> list[DeliveryRecord]:
        return [delivery_from(r) for r in self.db.query("SELECT * FROM deliveries WHERE job_id = ? ORDER BY id", (job_id,))]

    def update_delivery(self, delivery_id: int, state: DeliveryState, attempts: int, next_attempt_at: float, last_error: str | None) -> None:
        """Record one attempt's result; the job's delivery progress follows in the same transaction. A delivery
        superseded while it was being sent stays superseded unless it was sent (then a rejection note follows)."""
        with self.db.transaction() as tx:
            rows = tx.query(
                "UPDATE deliveries SET state = CASE WHEN state = ? AND ? != ? THEN state ELSE ? END, attempts = ?, next_attempt_at = ?, last_error = ?,"
                " claimed_by = NULL, claimed_until = NULL, updated_at = {now} WHERE id = ? RETURNING job_id",
                (DeliveryState.SUPERSEDED.value, DeliveryState(state).value, DeliveryState.SENT.value, DeliveryState(state).value)
                + (attempts, next_attempt_at, last_error, delivery_id),
            )
            if not rows:
                raise ValueError(f"delivery_id: no delivery {delivery_id}")
            settle(tx, rows[0]["job_id"])

    def requeue_dead(self, job_id: int | None = None) -> int:
        """Move parked (dead) deliveries back to the queue; returns how many."""
        with self.db.transaction() as tx:
            query = "UPDATE deliveries SET state = ?, attempts = 0, next_attempt_at = {now}, updated_at = {now} WHERE state = ?"
            params: tuple = (DeliveryState.QUEUED.value, DeliveryState.DEAD.value)
            if job_id is not None:
                query += " AND job_id = ?"
                params += (job_id,)
            rows = tx.query(query + " RETURNING job_id", params)
            for job in {r["job_id"] for r in rows}:
                settle(tx, job)
            return len(rows)
