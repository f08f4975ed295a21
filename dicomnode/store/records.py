"""The node's index of received instances, refusals, jobs and deliveries, on SQLite (embedded) or PostgreSQL
(cluster mode, shared by several receivers, workers and senders); the SQL is written once (see database.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dicomnode.instance import Instance
from dicomnode.store import history
from dicomnode.store.database import Database, Row, Session, SqliteDatabase
from dicomnode.store.history import History, HistoryEntry
from dicomnode.store.states import DeliveryState, JobDelivery, JobState, Outcome, job_delivery

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    seq {id},
    sop_uid TEXT UNIQUE NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    received_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_uid);
CREATE TABLE IF NOT EXISTS refusals (
    id {id},
    received_at {real} NOT NULL,
    calling_ae TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS waiting (
    study_uid TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    updated_at {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id {id},
    study_uid TEXT NOT NULL,
    version INTEGER NOT NULL,
    upto_seq BIGINT NOT NULL,
    state TEXT NOT NULL,
    outcome TEXT,
    delivery TEXT NOT NULL DEFAULT 'none',
    lease_owner TEXT,
    lease_until {real},
    series_uid TEXT,
    verdict TEXT,
    reasons TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    measurements TEXT,
    timings TEXT NOT NULL DEFAULT '{{}}',
    created_at {real} NOT NULL,
    updated_at {real} NOT NULL,
    UNIQUE (study_uid, version)
);
CREATE TABLE IF NOT EXISTS purges (
    id {id},
    study_uid TEXT NOT NULL,
    purged_at {real} NOT NULL,
    instances INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS receivers (
    name TEXT PRIMARY KEY,
    heartbeat_at {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS associations (
    receiver TEXT NOT NULL,
    association TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    since {real} NOT NULL,
    PRIMARY KEY (receiver, association, study_uid)
);
CREATE TABLE IF NOT EXISTS interrupted (
    study_uid TEXT PRIMARY KEY,
    since {real} NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id {id},
    job_id BIGINT NOT NULL REFERENCES jobs (id),
    destination TEXT NOT NULL,
    path TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at {real} NOT NULL,
    last_error TEXT,
    claimed_by TEXT,
    claimed_until {real},
    updated_at {real} NOT NULL,
    UNIQUE (job_id, destination, sop_uid)
);
CREATE TABLE IF NOT EXISTS commitment_requests (
    delivery_id BIGINT PRIMARY KEY REFERENCES deliveries (id),
    transaction_uid TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS commitment_requests_transaction ON commitment_requests (transaction_uid);
CREATE TABLE IF NOT EXISTS rejections (
    delivery_id BIGINT PRIMARY KEY REFERENCES deliveries (id),
    note_sop_uid TEXT NOT NULL,
    created_at {real} NOT NULL
)
"""
#: Deliveries that are rejection notes (IHE IOCM): never superseded, never rejected, sent before results.
_NOTES = "SELECT note_sop_uid FROM rejections WHERE note_sop_uid != ''"
#: A delivery ``d`` of a result (not a note) that was sent and that no rejection note names yet.
_UNREJECTED_SENT = "d.state = 'sent' AND NOT EXISTS (SELECT 1 FROM rejections r WHERE r.delivery_id = d.id) AND d.sop_uid NOT IN (" + _NOTES + ")"
#: For a queued delivery ``q``: an earlier version of its study sent a result to its destination that no note names.
_WAITING_FOR_NOTE = (
    "SELECT 1 FROM deliveries d JOIN jobs e ON e.id = d.job_id JOIN jobs jq ON jq.id = q.job_id"
    " WHERE d.destination = q.destination AND e.study_uid = jq.study_uid AND e.version < jq.version AND " + _UNREJECTED_SENT
)


@dataclass(frozen=True)
class Job:
    """One processing run of a study (a new version when more instances came after a run)."""

    id: int
    study_uid: str
    version: int
    upto_seq: int
    state: JobState
    outcome: Outcome | None  # set when the state becomes done
    delivery: JobDelivery
    series_uid: str | None
    verdict: str | None
    reasons: list[str]
    error: str | None
    measurements: dict | None
    timings: dict[str, float]
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Queued:
    """A result file to send to one destination, as a finished job queues it."""

    destination: str
    sop_uid: str
    path: Path


@dataclass(frozen=True)
class FinishedStudy:
    """A study whose every job is done and delivered (or had nothing to deliver), with no instance left unprocessed."""

    study_uid: str
    upto_seq: int  # its instances up to here are covered by its jobs
    last_activity: float  # latest of its last instance received and its last job change
    versions: tuple[int, ...]


@dataclass(frozen=True)
class Counts:
    """Totals for monitoring, read in one pass (``/metrics``)."""

    instances_received: int  # ever indexed, including those retention deleted since
    instances_stored: int
    refusals: int
    studies_waiting: int
    studies_purged: int
    jobs: dict[tuple[str, str, str], int]  # (state, outcome or "", delivery) -> jobs
    deliveries: dict[str, int]  # delivery state -> files
    failed_sends: int  # attempts that did not deliver
    stage_seconds: dict[str, tuple[float, int]]  # stage -> (seconds in all, jobs timed)


@dataclass(frozen=True)
class DeliveryRecord:
    """One result file to be sent to one destination."""

    id: int
    job_id: int
    destination: str
    path: Path
    sop_uid: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    last_error: str | None


@dataclass(frozen=True)
class Superseded:
    """A result sent to a destination, and the later version of its study whose rejection note is to name it."""

    delivery: DeliveryRecord
    study_uid: str
    version: int
    by_job: int
    by_version: int


class _AlreadyNamed(Exception):
    """Another sender queued a rejection note for one of these deliveries first."""


class LeaseLost(ValueError):
    """A worker's lease on a job expired (another worker may have it now): its result is not recorded."""


class Store:
    """Thread-safe access to the node's database."""

    def __init__(self, database: Database | Path) -> None:
        self.db: Database = SqliteDatabase(database) if isinstance(database, Path) else database
        self.db.script(SCHEMA)
        self.db.script(history.SCHEMA)
        self._migrate()
        self.history = History(self.db)

    def _migrate(self) -> None:
        """Databases (SQLite or PostgreSQL) made before processing, outcome and delivery were kept apart (one
        ``state`` held all three), or before leases: their columns are added and their jobs' states split."""
        columns = {row["name"] for row in self.db.query(self.db.dialect.columns, ("jobs",))}
        delivery_columns = {row["name"] for row in self.db.query(self.db.dialect.columns, ("deliveries",))}
        with self.db.transaction() as tx:
            if "claimed_by" not in delivery_columns:
                tx.execute("ALTER TABLE deliveries ADD COLUMN claimed_by TEXT")
                tx.execute("ALTER TABLE deliveries ADD COLUMN claimed_until {real}")
            if "lease_owner" not in columns:
                tx.execute("ALTER TABLE jobs ADD COLUMN lease_owner TEXT")
                tx.execute("ALTER TABLE jobs ADD COLUMN lease_until {real}")
            if "delivery" in columns:
                return
            if "outcome" not in columns:
                tx.execute("ALTER TABLE jobs ADD COLUMN outcome TEXT")
            tx.execute("ALTER TABLE jobs ADD COLUMN delivery TEXT NOT NULL DEFAULT 'none'")
            finished = "state NOT IN ('pending', 'running')"
            tx.execute(
                f"UPDATE jobs SET outcome = CASE COALESCE(outcome, state) WHEN 'no_result' THEN 'no_result'"
                f" WHEN 'failed' THEN 'failed' ELSE 'result' END WHERE {finished}"
            )
            tx.execute(f"UPDATE jobs SET state = 'done' WHERE {finished}")
            for row in tx.query("SELECT id FROM jobs WHERE state = 'done'"):
                _settle(tx, row["id"])

    def close(self) -> None:
        self.db.close()

    def now(self) -> float:
        """The database's clock (one clock for every machine of a cluster)."""
        return float(self.db.query("SELECT {now} AS now")[0]["now"])

    # -- instances -----------------------------------------------------------------------------------------------
    def has_instance(self, sop_uid: str) -> bool:
        return bool(self.db.query("SELECT 1 AS found FROM instances WHERE sop_uid = ?", (sop_uid,)))

    def add_instance(self, sop_uid: str, study_uid: str, series_uid: str, sop_class_uid: str, path: Path, calling_ae: str) -> bool:
        """Index a stored instance with the database's clock; False if its SOP Instance UID was already indexed."""
        return (
            self.db.execute(
                "INSERT INTO instances (sop_uid, study_uid, series_uid, sop_class_uid, path, calling_ae, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?, {now}) ON CONFLICT DO NOTHING",
                (sop_uid, study_uid, series_uid, sop_class_uid, str(path), calling_ae),
            )
            == 1
        )

    def instance_class(self, sop_uid: str) -> str | None:
        """The SOP Class UID the instance ``sop_uid`` was stored under; None if it is not indexed."""
        rows = self.db.query("SELECT sop_class_uid FROM instances WHERE sop_uid = ?", (sop_uid,))
        return str(rows[0]["sop_class_uid"]) if rows else None

    def paths_of(self, sop_uid: str) -> set[str]:
        """Where the instance ``sop_uid`` is stored (one path, or none if it is not indexed)."""
        return {r["path"] for r in self.db.query("SELECT path FROM instances WHERE sop_uid = ?", (sop_uid,))}

    def indexed_paths(self) -> set[str]:
        return {r["path"] for r in self.db.query("SELECT path FROM instances")}

    def add_refusal(self, calling_ae: str, study_uid: str, sop_uid: str, reason: str) -> None:
        self.db.execute(
            "INSERT INTO refusals (received_at, calling_ae, study_uid, sop_uid, reason) VALUES ({now}, ?, ?, ?, ?)",
            (calling_ae, study_uid, sop_uid, reason),
        )

    def refusals(self) -> list[dict]:
        return [dict(r) for r in self.db.query("SELECT * FROM refusals ORDER BY id")]

    def study_instances(self, study_uid: str, upto_seq: int) -> list[Instance]:
        rows = self.db.query("SELECT * FROM instances WHERE study_uid = ? AND seq <= ? ORDER BY seq", (study_uid, upto_seq))
        return [Instance(r["seq"], r["sop_uid"], r["study_uid"], r["series_uid"], r["sop_class_uid"], Path(r["path"])) for r in rows]

    def studies_with_new_instances(self) -> list[Row]:
        """Studies holding instances not covered by any job: (study_uid, max_seq, last_received_at)."""
        return self.db.query(
            "SELECT i.study_uid, MAX(i.seq) AS max_seq, MAX(i.received_at) AS last_received_at FROM instances i"
            " GROUP BY i.study_uid"
            " HAVING MAX(i.seq) > COALESCE((SELECT MAX(j.upto_seq) FROM jobs j WHERE j.study_uid = i.study_uid), 0)"
        )

    # -- receivers and their open associations (the quiet period sees every receiver of a cluster) --------------------
    def receiver_alive(self, receiver: str) -> None:
        """A receiver's heartbeat; its open associations count while it beats."""
        self.db.execute(
            "INSERT INTO receivers (name, heartbeat_at) VALUES (?, {now}) ON CONFLICT (name) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
            (receiver,),
        )

    def association_sent(self, receiver: str, association: str, study_uid: str) -> None:
        """An open association of ``receiver`` has sent an instance of ``study_uid`` (the first time counts)."""
        self.db.execute(
            "INSERT INTO associations (receiver, association, study_uid, since) VALUES (?, ?, ?, {now}) ON CONFLICT DO NOTHING",
            (receiver, association, study_uid),
        )

    def association_closed(self, receiver: str, association: str, released: bool) -> None:
        """An association ended. Released, it also settles any earlier interruption of the studies it sent; ended
        any other way (aborted, cut off, timed out), its studies count as interrupted until a job covers them or an
        association sending to them is released."""
        where = "receiver = ? AND association = ?"
        with self.db.transaction() as tx:
            if released:
                tx.execute(f"DELETE FROM interrupted WHERE study_uid IN (SELECT study_uid FROM associations WHERE {where})", (receiver, association))
            else:
                _interrupt(tx, where, (receiver, association), "an association sending it ended without release (aborted or cut off)")
            tx.execute(f"DELETE FROM associations WHERE {where}", (receiver, association))

    def forget_associations(self, receiver: str) -> None:
        """A receiver starting anew: the associations its previous process had open are gone with it, and the
        studies they were sending count as interrupted."""
        with self.db.transaction() as tx:
            _interrupt(tx, "receiver = ?", (receiver,), "the node stopped while an association was sending it")
            tx.execute("DELETE FROM associations WHERE receiver = ?", (receiver,))

    def interrupted_studies(self) -> dict[str, str]:
        """Studies whose sending was interrupted (study -> why), which wait for ``max_wait_s``, not the quiet period."""
        return {r["study_uid"]: r["reason"] for r in self.db.query("SELECT study_uid, reason FROM interrupted")}

    def open_studies(self, alive_within_s: float) -> dict[str, float]:
        """Studies an open association is sending, on any receiver whose heartbeat is younger than ``alive_within_s``:
        study -> when its oldest such association first sent to it."""
        rows = self.db.query(
            "SELECT a.study_uid, MIN(a.since) AS since FROM associations a JOIN receivers r ON r.name = a.receiver"
            " WHERE r.heartbeat_at >= {now} - ? GROUP BY a.study_uid",
            (alive_within_s,),
        )
        return {r["study_uid"]: float(r["since"]) for r in rows}

    def set_waiting(self, reasons: dict[str, str]) -> None:
        """Replace the list of studies that are not complete yet, each with why it waits (for ``status``)."""
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM waiting")
            tx.executemany("INSERT INTO waiting (study_uid, reason, updated_at) VALUES (?, ?, {now})", list(reasons.items()))

    def waiting(self) -> dict[str, str]:
        return {row["study_uid"]: row["reason"] for row in self.db.query("SELECT * FROM waiting ORDER BY study_uid")}

    def counts(self) -> Counts:
        jobs = {
            (r["state"], r["outcome"] or "", r["delivery"]): int(r["n"])
            for r in self.db.query("SELECT state, outcome, delivery, COUNT(*) AS n FROM jobs GROUP BY state, outcome, delivery")
        }
        deliveries = {r["state"]: int(r["n"]) for r in self.db.query("SELECT state, COUNT(*) AS n FROM deliveries GROUP BY state")}
        stages = {r["stage"]: (float(r["seconds"]), int(r["jobs"])) for r in self.db.query(self.db.dialect.stage_seconds)}
        stored, purged = self._one("SELECT COUNT(*) AS n FROM instances"), self._one("SELECT SUM(instances) AS n FROM purges")
        return Counts(
            instances_received=stored + purged,
            instances_stored=stored,
            refusals=self._one("SELECT COUNT(*) AS n FROM refusals"),
            studies_waiting=self._one("SELECT COUNT(*) AS n FROM waiting"),
            studies_purged=self._one("SELECT COUNT(*) AS n FROM purges"),
            jobs=jobs,
            deliveries=deliveries,
            failed_sends=self._one("SELECT SUM(attempts) - SUM(CASE WHEN state = 'sent' THEN 1 ELSE 0 END) AS n FROM deliveries"),
            stage_seconds=stages,
        )

    def _one(self, query: str) -> int:
        rows = self.db.query(query)
        return int(rows[0]["n"] or 0) if rows else 0

    def healthy(self) -> tuple[bool, str]:
        """Whether the database answers a query, and why not."""
        try:
            self.db.query("SELECT 1 AS ok FROM jobs LIMIT 1")
        except Exception as exc:  # sqlite3.Error, psycopg.Error, a pool timeout: all mean "not answering"
            return False, f"database: {exc}"
        return True, ""

    def recent_jobs(self, limit: int) -> list[Job]:
        return [_job(r) for r in self.db.query("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))]

    # -- retention -----------------------------------------------------------------------------------------------
    _FINISHED = (
        "SELECT i.study_uid, MAX(i.seq) AS upto_seq,"
        " {greatest}(MAX(i.received_at), (SELECT MAX(j.updated_at) FROM jobs j WHERE j.study_uid = i.study_uid)) AS last_activity,"
        " {versions} AS versions"
        " FROM instances i WHERE_CLAUSE GROUP BY i.study_uid"
        " HAVING MAX(i.seq) <= COALESCE((SELECT MAX(j.upto_seq) FROM jobs j WHERE j.study_uid = i.study_uid), 0)"
        " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.study_uid = i.study_uid AND (j.state != 'done' OR j.delivery IN ('sending', 'failed')))"
        " ORDER BY last_activity"
    )

    def finished_studies(self) -> list[FinishedStudy]:
        """Studies that retention may delete, least recently active first; a study with a job not done, a delivery
        queued or parked, or instances no job covers yet is never among them."""
        return [_finished(r) for r in self.db.query(self._FINISHED.replace("WHERE_CLAUSE", ""))]

    def purge_study(self, study: FinishedStudy, reason: str, delete: Callable[[list[Path], tuple[int, ...]], None]) -> int:
        """Forget a finished study's instances and call ``delete(paths, versions)`` to remove their files and results,
        in one transaction that first checks the study is still finished; returns how many instances went (0 if it
        was not finished any more). On SQLite the receiver's duplicate check waits for this transaction, so an
        instance sent again while it runs is stored anew, not lost."""
        with self.db.transaction() as tx:
            rows = tx.query(self._FINISHED.replace("WHERE_CLAUSE", "WHERE i.study_uid = ?"), (study.study_uid,))
            if not rows or rows[0]["upto_seq"] != study.upto_seq:
                return 0
            paths = [Path(r["path"]) for r in tx.query("SELECT path FROM instances WHERE study_uid = ? AND seq <= ?", (study.study_uid, study.upto_seq))]
            tx.execute("DELETE FROM instances WHERE study_uid = ? AND seq <= ?", (study.study_uid, study.upto_seq))
            tx.execute("INSERT INTO purges (study_uid, purged_at, instances, reason) VALUES (?, {now}, ?, ?)", (study.study_uid, len(paths), reason))
            delete(paths, _finished(rows[0]).versions)
        return len(paths)

    def purges(self) -> list[dict]:
        return [dict(r) for r in self.db.query("SELECT * FROM purges ORDER BY id")]

    # -- jobs ----------------------------------------------------------------------------------------------------
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
                made.append(_job(row))
                tx.execute("DELETE FROM interrupted WHERE study_uid = ?", (study_uid,))
        return made

    def job(self, job_id: int) -> Job:
        rows = self.db.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise ValueError(f"job_id: no job {job_id}")
        return _job(rows[0])

    def jobs(self, state: JobState | None = None, delivery: JobDelivery | None = None) -> list[Job]:
        """Jobs in creation order, optionally only those in ``state`` and/or with ``delivery``."""
        query, params = "SELECT * FROM jobs WHERE TRUE", list[str]()
        if state is not None:
            query, params = query + " AND state = ?", [*params, JobState(state).value]
        if delivery is not None:
            query, params = query + " AND delivery = ?", [*params, JobDelivery(delivery).value]
        return [_job(r) for r in self.db.query(query + " ORDER BY id", params)]

    def start_job(self, job_id: int) -> None:
        """pending -> running, for the embedded node's one worker (no lease)."""
        with self.db.transaction() as tx:
            _move(tx, job_id, (JobState.PENDING,), JobState.RUNNING)

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
        return _job(rows[0]) if rows else None

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
            interrupted = [_job(r) for r in tx.query("SELECT * FROM jobs WHERE state = ? ORDER BY id", (JobState.RUNNING.value,))]
            for job in interrupted:
                _move(tx, job.id, (JobState.RUNNING,), JobState.PENDING, lease_owner=None, lease_until=None)
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
            _move(tx, job_id, (JobState.RUNNING,), JobState.DONE, outcome=Outcome(outcome).value, lease_owner=None, lease_until=None, **record)
            _settle(tx, job_id)
            _supersede_earlier(tx, job_id)
            [study] = tx.query("SELECT study_uid FROM jobs WHERE id = ?", (job_id,))
            history.replace(tx, study["study_uid"], job_id, measured)

    # -- deliveries ----------------------------------------------------------------------------------------------
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
                " AND (q.sop_uid IN (" + _NOTES + ") OR NOT EXISTS (" + _WAITING_FOR_NOTE + "))"
                " ORDER BY q.id LIMIT ?{skip_locked}) RETURNING *",
                (sender, lease_s, DeliveryState.QUEUED.value, now, limit),
            )
            notes = {r["note_sop_uid"] for r in tx.query(_NOTES)} if rows else set()
        return sorted((_delivery(r) for r in rows), key=lambda d: (d.sop_uid not in notes, d.id))

    def superseded_sent(self) -> list[Superseded]:
        """Results sent to a destination whose study has a later version done since, and that no rejection note
        names yet, each with the latest done job of its study (the one whose note will reject it)."""
        rows = self.db.query(
            "SELECT d.*, j.study_uid, j.version AS rejected_version, k.id AS by_job, k.version AS by_version FROM deliveries d"
            " JOIN jobs j ON j.id = d.job_id"
            " JOIN jobs k ON k.study_uid = j.study_uid AND k.version = (SELECT MAX(version) FROM jobs WHERE study_uid = j.study_uid AND state = 'done')"
            " WHERE k.version > j.version AND " + _UNREJECTED_SENT + " ORDER BY d.id"
        )
        return [Superseded(_delivery(r), r["study_uid"], r["rejected_version"], r["by_job"], r["by_version"]) for r in rows]

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
            _settle(tx, job_id)

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
                _settle(tx, rows[0]["job_id"])

    def committing(self, transaction_uid: str | None = None, overdue_at: float | None = None) -> list[DeliveryRecord]:
        """Deliveries awaiting a commitment report: those of ``transaction_uid``, or those whose deadline passed by
        ``overdue_at``."""
        query = "SELECT d.* FROM deliveries d JOIN commitment_requests c ON c.delivery_id = d.id WHERE d.state = ?"
        params: list[object] = [DeliveryState.COMMITTING.value]
        if transaction_uid is not None:
            query, params = query + " AND c.transaction_uid = ?", [*params, transaction_uid]
        if overdue_at is not None:
            query, params = query + " AND d.next_attempt_at <= ?", [*params, overdue_at]
        return [_delivery(r) for r in self.db.query(query + " ORDER BY d.id", params)]

    def rejection_notes(self) -> set[str]:
        """SOP Instance UIDs of every rejection note queued."""
        return {r["note_sop_uid"] for r in self.db.query(_NOTES)}

    def deliveries(self, job_id: int) -> list[DeliveryRecord]:
        return [_delivery(r) for r in self.db.query("SELECT * FROM deliveries WHERE job_id = ? ORDER BY id", (job_id,))]

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
            _settle(tx, rows[0]["job_id"])

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
                _settle(tx, job)
            return len(rows)


def _move(tx: Session, job_id: int, before: tuple[JobState, ...], after: JobState, **values: object) -> None:
    """The one place a job's processing state changes; raises ValueError if the job is not in ``before``."""
    encoded = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in values.items()}
    encoded.update(state=after.value)
    columns = ", ".join(f"{k} = ?" for k in encoded) + ", updated_at = {now}"
    allowed = ", ".join("?" for _ in before)
    changed = tx.execute(f"UPDATE jobs SET {columns} WHERE id = ? AND state IN ({allowed})", (*encoded.values(), job_id, *(s.value for s in before)))
    if changed != 1:
        raise ValueError(f"job_id: job {job_id} is not {' or '.join(s.value for s in before)}, so it cannot become {after.value}")


def _supersede_earlier(tx: Session, job_id: int) -> None:
    """What earlier versions of the job's study queued or parked, and has not been sent, is not sent any more."""
    rows = tx.query(
        "UPDATE deliveries SET state = ?, claimed_by = NULL, claimed_until = NULL, updated_at = {now} WHERE state IN (?, ?)"
        " AND sop_uid NOT IN ("
        + _NOTES
        + ") AND job_id IN (SELECT e.id FROM jobs e JOIN jobs j ON j.study_uid = e.study_uid WHERE j.id = ? AND e.version < j.version)"
        " RETURNING job_id",
        (DeliveryState.SUPERSEDED.value, DeliveryState.QUEUED.value, DeliveryState.DEAD.value, job_id),
    )
    for earlier in {r["job_id"] for r in rows}:
        _settle(tx, earlier)


def _settle(tx: Session, job_id: int) -> None:
    """The one place a job's delivery progress changes: derived from its delivery rows."""
    states = {DeliveryState(r["state"]) for r in tx.query("SELECT DISTINCT state FROM deliveries WHERE job_id = ?", (job_id,))}
    tx.execute("UPDATE jobs SET delivery = ?, updated_at = {now} WHERE id = ?", (job_delivery(states).value, job_id))


def _job(row: Row) -> Job:
    return Job(
        row["id"],
        row["study_uid"],
        row["version"],
        row["upto_seq"],
        JobState(row["state"]),
        Outcome(row["outcome"]) if row["outcome"] else None,
        JobDelivery(row["delivery"]),
        row["series_uid"],
        row["verdict"],
        json.loads(row["reasons"]),
        row["error"],
        json.loads(row["measurements"]) if row["measurements"] else None,
        json.loads(row["timings"]),
        row["created_at"],
        row["updated_at"],
    )


def _interrupt(tx: Session, where: str, params: tuple, reason: str) -> None:
    """Mark the studies of the associations selected by ``where`` as interrupted (the first reason stays)."""
    tx.execute(
        f"INSERT INTO interrupted (study_uid, since, reason) SELECT DISTINCT study_uid, {{now}}, ? FROM associations WHERE {where}"
        " ON CONFLICT (study_uid) DO NOTHING",
        (reason, *params),
    )


def _finished(row: Row) -> FinishedStudy:
    versions = tuple(sorted(int(v) for v in str(row["versions"]).split(",")))
    return FinishedStudy(row["study_uid"], row["upto_seq"], row["last_activity"], versions)


def _delivery(row: Row) -> DeliveryRecord:
    return DeliveryRecord(
        row["id"],
        row["job_id"],
        row["destination"],
        Path(row["path"]),
        row["sop_uid"],
        DeliveryState(row["state"]),
        row["attempts"],
        row["next_attempt_at"],
        row["last_error"],
    )
