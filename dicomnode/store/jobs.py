"""Jobs: made by the completer, claimed under a lease by a worker, finished with their outcome and results."""

from __future__ import annotations

from dicomnode.measured import HistoryEntry, Source
from dicomnode.store import history
from dicomnode.store.database import Database
from dicomnode.store.records import Job, Queued, job_from
from dicomnode.store.states import DeliveryState, JobDelivery, JobKind, JobState, Outcome
from dicomnode.store.transitions import move, settle, supersede_earlier

#: The largest id SQLite's and PostgreSQL's integer keys hold (signed 64 bits).
MAX_ID = 2**63 - 1


class LeaseLost(ValueError):
    """A worker's lease on a job expired (another worker may have it now): its result is not recorded."""


class Jobs:
    """Jobs: made by the completer, claimed under a lease by a worker, finished with their outcome and results."""

    db: Database

    def create_job(self, study_uid: str, upto_seq: int) -> Job:
        [job] = self.create_jobs([(study_uid, upto_seq)])
        return job

    def create_jobs(self, ready: list[tuple[str, int]]) -> list[Job]:
        """A job (a new version) for each (study, up to seq) whose instances up to there no job covers yet; one
        completer at a time, so two receivers completing the same study make one job."""
        made = []
        with self.db.transaction() as tx:
            if tx.dialect.completion_lock:
                tx.query(tx.dialect.completion_lock)
            for study_uid, upto_seq in ready:
                latest = tx.query("SELECT COALESCE(MAX(version), 0) AS v, COALESCE(MAX(upto_seq), 0) AS s FROM jobs WHERE study_uid = ?", (study_uid,))[0]
                if latest["s"] >= upto_seq:
                    continue  # another completer was first
                [row] = tx.query(
                    "INSERT INTO jobs (study_uid, version, upto_seq, state, created_at, updated_at) VALUES (?, ?, ?, ?, {now}, {now}) RETURNING *",
                    (study_uid, latest["v"] + 1, upto_seq, JobState.PENDING.value),
                )
                made.append(job_from(row))
                tx.execute("DELETE FROM interrupted WHERE study_uid = ?", (study_uid,))
        return made

    def job(self, job_id: int) -> Job:
        """Job ``job_id``; ValueError where there is none, as for an id beyond ``MAX_ID``, which no database holds."""
        rows = self.db.query("SELECT * FROM jobs WHERE id = ?", (job_id,)) if abs(job_id) <= MAX_ID else []
        if not rows:
            raise ValueError(f"job_id: no job {job_id}")
        return job_from(rows[0])

    def jobs(self, state: JobState | None = None, delivery: JobDelivery | None = None) -> list[Job]:
        """Jobs in creation order, optionally only those in ``state`` and/or with ``delivery``."""
        query, params = "SELECT * FROM jobs WHERE TRUE", list[str]()
        if state is not None:
            query, params = query + " AND state = ?", [*params, JobState(state).value]
        if delivery is not None:
            query, params = query + " AND delivery = ?", [*params, JobDelivery(delivery).value]
        return [job_from(r) for r in self.db.query(query + " ORDER BY id", params)]

    def start_job(self, job_id: int) -> None:
        """pending -> running, for the embedded node's one worker (no lease)."""
        with self.db.transaction() as tx:
            move(tx, job_id, (JobState.PENDING,), JobState.RUNNING)

    def claim_job(self, worker: str, lease_s: float) -> Job | None:
        """The oldest pending job, now running under ``worker``'s lease for ``lease_s`` seconds of the database's
        clock; None when none is pending. Workers on several machines never get the same job (row lock, skipped by
        the others)."""
        with self.db.transaction() as tx:
            rows = tx.query(
                "UPDATE jobs SET state = ?, lease_owner = ?, lease_until = {now} + ?, updated_at = {now}"
                " WHERE id = (SELECT id FROM jobs WHERE state = ? ORDER BY id LIMIT 1{skip_locked}) AND state = ? RETURNING *",
                (JobState.RUNNING.value, worker, lease_s, JobState.PENDING.value, JobState.PENDING.value),
            )
        return job_from(rows[0]) if rows else None

    def renew_lease(self, job_id: int, worker: str, lease_s: float) -> bool:
        """Extend ``worker``'s lease on a running job (its heartbeat); False if the lease is no longer its own."""
        return (
            self.db.execute(
                "UPDATE jobs SET lease_until = {now} + ? WHERE id = ? AND state = ? AND lease_owner = ? AND lease_until >= {now}",
                (lease_s, job_id, JobState.RUNNING.value, worker),
            )
            == 1
        )

    def reap_expired(self) -> list[int]:
        """Running jobs whose lease expired (their worker died or stalled) go back to pending; returns their ids."""
        with self.db.transaction() as tx:
            rows = tx.query(
                "UPDATE jobs SET state = ?, lease_owner = NULL, lease_until = NULL, updated_at = {now}"
                " WHERE state = ? AND lease_until IS NOT NULL AND lease_until < {now} RETURNING id",
                (JobState.PENDING.value, JobState.RUNNING.value),
            )
        return sorted(r["id"] for r in rows)

    def requeue_interrupted(self) -> list[Job]:
        """Jobs left running by a crash of the embedded node go back to pending; returns them."""
        with self.db.transaction() as tx:
            interrupted = [job_from(r) for r in tx.query("SELECT * FROM jobs WHERE state = ? ORDER BY id", (JobState.RUNNING.value,))]
            for job in interrupted:
                move(tx, job.id, (JobState.RUNNING,), JobState.PENDING, lease_owner=None, lease_until=None)
        return interrupted

    def finish_job(
        self, job_id: int, outcome: Outcome, queued: list[Queued], worker: str | None = None, measured: HistoryEntry | None = None, **record: object
    ) -> None:
        """running -> done with its ``outcome``; queues the result files for their destinations and makes ``measured``
        its study's row of the measurement history (none: the study has no row any more), in one transaction.

        With ``worker``, the job must still be under that worker's unexpired lease, else :class:`LeaseLost` is
        raised and nothing is recorded or queued. ``record`` holds the job's other columns (verdict, reasons,
        series_uid, measurements, error, timings).
        """
        with self.db.transaction() as tx:
            if worker is not None:
                held = tx.query(
                    "SELECT id FROM jobs WHERE id = ? AND state = ? AND lease_owner = ? AND lease_until >= {now}{skip_locked}",
                    (job_id, JobState.RUNNING.value, worker),
                )
                if not held:
                    raise LeaseLost(f"job_id: job {job_id} is no longer leased to {worker}; its result is not recorded")
            tx.executemany(
                "INSERT INTO deliveries (job_id, destination, path, sop_uid, state, next_attempt_at, updated_at) VALUES (?, ?, ?, ?, ?, {now}, {now})"
                " ON CONFLICT DO NOTHING",
                [(job_id, q.destination, str(q.path), q.sop_uid, DeliveryState.QUEUED.value) for q in queued],
            )
            move(tx, job_id, (JobState.RUNNING,), JobState.DONE, outcome=Outcome(outcome).value, lease_owner=None, lease_until=None, **record)
            settle(tx, job_id)
            supersede_earlier(tx, job_id)
            [job] = tx.query("SELECT study_uid, kind FROM jobs WHERE id = ?", (job_id,))
            if job["kind"] == JobKind.MODEL.value:
                history.replace(tx, job["study_uid"], job_id, measured, Source.NODE)
            elif measured is not None:  # a correction not taken leaves the reader's row as it was
                history.replace(tx, job["study_uid"], job_id, measured, Source.READER)
