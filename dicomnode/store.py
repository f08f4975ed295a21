"""SQLite (WAL) index of received instances, refusals, jobs and deliveries."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dicomnode.states import DeliveryState, JobDelivery, JobState, Outcome, job_delivery

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_uid TEXT UNIQUE NOT NULL,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_uid);
CREATE TABLE IF NOT EXISTS refusals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    calling_ae TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS waiting (
    study_uid TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    version INTEGER NOT NULL,
    upto_seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    outcome TEXT,
    delivery TEXT NOT NULL DEFAULT 'none',
    series_uid TEXT,
    verdict TEXT,
    reasons TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    measurements TEXT,
    timings TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (study_uid, version)
);
CREATE TABLE IF NOT EXISTS purges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    purged_at REAL NOT NULL,
    instances INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    destination TEXT NOT NULL,
    path TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    updated_at REAL NOT NULL,
    UNIQUE (job_id, destination, sop_uid)
);
"""


@dataclass(frozen=True)
class Instance:
    """One received, stored instance."""

    seq: int
    sop_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    path: Path


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


class Store:
    """Thread-safe access to the node's database."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            self._migrate()

    def _migrate(self) -> None:
        """Databases made before processing, outcome and delivery were kept apart: one ``state`` held all three."""
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if "delivery" in columns:
            return
        with self._transaction():
            if "outcome" not in columns:
                self._db.execute("ALTER TABLE jobs ADD COLUMN outcome TEXT")
            self._db.execute("ALTER TABLE jobs ADD COLUMN delivery TEXT NOT NULL DEFAULT 'none'")
            finished = "state NOT IN ('pending', 'running')"
            self._db.execute(
                f"UPDATE jobs SET outcome = CASE COALESCE(outcome, state) WHEN 'no_result' THEN 'no_result'"
                f" WHEN 'failed' THEN 'failed' ELSE 'result' END WHERE {finished}"
            )
            self._db.execute(f"UPDATE jobs SET state = 'done' WHERE {finished}")
            for (job_id,) in self._db.execute("SELECT id FROM jobs WHERE state = 'done'").fetchall():
                self._settle(job_id)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- instances -----------------------------------------------------------------------------------------------
    def has_instance(self, sop_uid: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM instances WHERE sop_uid = ?", (sop_uid,)).fetchone() is not None

    def add_instance(self, sop_uid: str, study_uid: str, series_uid: str, sop_class_uid: str, path: Path, calling_ae: str) -> bool:
        """Index a stored instance; False if its SOP Instance UID was already indexed."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO instances (sop_uid, study_uid, series_uid, sop_class_uid, path, calling_ae, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sop_uid, study_uid, series_uid, sop_class_uid, str(path), calling_ae, time.time()),
            )
            return cursor.rowcount == 1

    def add_refusal(self, calling_ae: str, study_uid: str, sop_uid: str, reason: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO refusals (received_at, calling_ae, study_uid, sop_uid, reason) VALUES (?, ?, ?, ?, ?)",
                (time.time(), calling_ae, study_uid, sop_uid, reason),
            )

    def refusals(self) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute("SELECT * FROM refusals ORDER BY id").fetchall()

    def study_instances(self, study_uid: str, upto_seq: int) -> list[Instance]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM instances WHERE study_uid = ? AND seq <= ? ORDER BY seq", (study_uid, upto_seq)).fetchall()
        return [Instance(r["seq"], r["sop_uid"], r["study_uid"], r["series_uid"], r["sop_class_uid"], Path(r["path"])) for r in rows]

    def studies_with_new_instances(self) -> list[sqlite3.Row]:
        """Studies holding instances not covered by any job: (study_uid, max_seq, last_received_at)."""
        with self._lock:
            return self._db.execute(
                "SELECT i.study_uid, MAX(i.seq) AS max_seq, MAX(i.received_at) AS last_received_at FROM instances i"
                " GROUP BY i.study_uid"
                " HAVING MAX(i.seq) > COALESCE((SELECT MAX(j.upto_seq) FROM jobs j WHERE j.study_uid = i.study_uid), 0)"
            ).fetchall()

    def set_waiting(self, reasons: dict[str, str]) -> None:
        """Replace the list of studies that are not complete yet, each with why it waits (for ``status``)."""
        now = time.time()
        with self._transaction():
            self._db.execute("DELETE FROM waiting")
            self._db.executemany("INSERT INTO waiting (study_uid, reason, updated_at) VALUES (?, ?, ?)", [(k, v, now) for k, v in reasons.items()])

    def waiting(self) -> dict[str, str]:
        with self._lock:
            return {row["study_uid"]: row["reason"] for row in self._db.execute("SELECT * FROM waiting ORDER BY study_uid")}

    def counts(self) -> Counts:
        with self._lock:
            jobs = {
                (r[0], r[1] or "", r[2]): r[3]
                for r in self._db.execute("SELECT state, outcome, delivery, COUNT(*) FROM jobs GROUP BY state, outcome, delivery")
            }
            deliveries = {r[0]: r[1] for r in self._db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state")}
            stages = {
                r[0]: (float(r[1]), int(r[2]))
                for r in self._db.execute("SELECT t.key, SUM(t.value), COUNT(*) FROM jobs, json_each(jobs.timings) AS t GROUP BY t.key")
            }
            return Counts(
                instances_received=self._one("SELECT seq FROM sqlite_sequence WHERE name = 'instances'"),
                instances_stored=self._one("SELECT COUNT(*) FROM instances"),
                refusals=self._one("SELECT COUNT(*) FROM refusals"),
                studies_waiting=self._one("SELECT COUNT(*) FROM waiting"),
                studies_purged=self._one("SELECT COUNT(*) FROM purges"),
                jobs=jobs,
                deliveries=deliveries,
                failed_sends=self._one("SELECT SUM(attempts) - SUM(state = 'sent') FROM deliveries"),
                stage_seconds=stages,
            )

    def _one(self, query: str) -> int:
        row = self._db.execute(query).fetchone()
        return int(row[0] or 0) if row else 0

    def healthy(self) -> tuple[bool, str]:
        """Whether the database answers a query, and why not."""
        try:
            with self._lock:
                self._db.execute("SELECT 1 FROM jobs LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            return False, f"database: {exc}"
        return True, ""

    def recent_jobs(self, limit: int) -> list[Job]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [_job(r) for r in rows]

    # -- retention -----------------------------------------------------------------------------------------------
    _FINISHED = (
        "SELECT i.study_uid, MAX(i.seq) AS upto_seq,"
        " MAX(MAX(i.received_at), (SELECT MAX(j.updated_at) FROM jobs j WHERE j.study_uid = i.study_uid)) AS last_activity,"
        " (SELECT GROUP_CONCAT(j.version) FROM jobs j WHERE j.study_uid = i.study_uid) AS versions"
        " FROM instances i {where} GROUP BY i.study_uid"
        " HAVING MAX(i.seq) <= COALESCE((SELECT MAX(j.upto_seq) FROM jobs j WHERE j.study_uid = i.study_uid), 0)"
        " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.study_uid = i.study_uid AND (j.state != 'done' OR j.delivery IN ('sending', 'failed')))"
        " ORDER BY last_activity"
    )

    def finished_studies(self) -> list[FinishedStudy]:
        """Studies that retention may delete, least recently active first; a study with a job not done, a delivery
        queued or parked, or instances no job covers yet is never among them."""
        with self._lock:
            rows = self._db.execute(self._FINISHED.format(where="")).fetchall()
        return [_finished(r) for r in rows]

    def purge_study(self, study: FinishedStudy, reason: str, delete: Callable[[list[Path], tuple[int, ...]], None]) -> int:
        """Forget a finished study's instances and call ``delete(paths, versions)`` to remove their files and results,
        in one transaction that first checks the study is still finished; returns how many instances went (0 if it
        was not finished any more). The receiver's duplicate check takes the same lock, so an instance sent again
        while this runs is stored anew, not lost."""
        with self._transaction():
            row = self._db.execute(self._FINISHED.format(where="WHERE i.study_uid = ?"), (study.study_uid,)).fetchone()
            if row is None or row["upto_seq"] != study.upto_seq:
                return 0
            paths = [Path(r[0]) for r in self._db.execute("SELECT path FROM instances WHERE study_uid = ? AND seq <= ?", (study.study_uid, study.upto_seq))]
            self._db.execute("DELETE FROM instances WHERE study_uid = ? AND seq <= ?", (study.study_uid, study.upto_seq))
            self._db.execute(
                "INSERT INTO purges (study_uid, purged_at, instances, reason) VALUES (?, ?, ?, ?)",
                (study.study_uid, time.time(), len(paths), reason),
            )
            delete(paths, _finished(row).versions)
        return len(paths)

    def purges(self) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute("SELECT * FROM purges ORDER BY id").fetchall()

    # -- jobs ----------------------------------------------------------------------------------------------------
    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def create_job(self, study_uid: str, upto_seq: int) -> Job:
        now = time.time()
        with self._transaction():
            version = self._db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM jobs WHERE study_uid = ?", (study_uid,)).fetchone()[0]
            cursor = self._db.execute(
                "INSERT INTO jobs (study_uid, version, upto_seq, state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (study_uid, version, upto_seq, JobState.PENDING.value, now, now),
            )
        assert cursor.lastrowid is not None
        return self.job(cursor.lastrowid)

    def job(self, job_id: int) -> Job:
        with self._lock:
            return _job(self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def jobs(self, state: JobState | None = None, delivery: JobDelivery | None = None) -> list[Job]:
        """Jobs in creation order, optionally only those in ``state`` and/or with ``delivery``."""
        query, params = "SELECT * FROM jobs WHERE 1", list[str]()
        if state is not None:
            query, params = query + " AND state = ?", [*params, JobState(state).value]
        if delivery is not None:
            query, params = query + " AND delivery = ?", [*params, JobDelivery(delivery).value]
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", params).fetchall()
        return [_job(r) for r in rows]

    def _move(self, job_id: int, before: tuple[JobState, ...], after: JobState, **values: object) -> None:
        """The one place a job's processing state changes; raises ValueError if the job is not in ``before``."""
        encoded = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in values.items()}
        encoded.update(state=after.value, updated_at=time.time())
        columns = ", ".join(f"{k} = ?" for k in encoded)
        allowed = ", ".join("?" for _ in before)
        cursor = self._db.execute(f"UPDATE jobs SET {columns} WHERE id = ? AND state IN ({allowed})", (*encoded.values(), job_id, *(s.value for s in before)))
        if cursor.rowcount != 1:
            raise ValueError(f"job_id: job {job_id} is not {' or '.join(s.value for s in before)}, so it cannot become {after.value}")

    def start_job(self, job_id: int) -> None:
        """pending -> running."""
        with self._lock:
            self._move(job_id, (JobState.PENDING,), JobState.RUNNING)

    def requeue_interrupted(self) -> list[Job]:
        """Jobs left running by a crash go back to pending; returns them."""
        with self._transaction():
            interrupted = self.jobs(JobState.RUNNING)
            for job in interrupted:
                self._move(job.id, (JobState.RUNNING,), JobState.PENDING)
        return interrupted

    def finish_job(self, job_id: int, outcome: Outcome, queued: list[Queued], **record: object) -> None:
        """running -> done with its ``outcome``; queues the result files for their destinations, in one transaction.

        ``record`` holds the job's other columns (verdict, reasons, series_uid, measurements, error, timings).
        """
        now = time.time()
        with self._transaction():
            self._db.executemany(
                "INSERT OR IGNORE INTO deliveries (job_id, destination, path, sop_uid, state, next_attempt_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(job_id, q.destination, str(q.path), q.sop_uid, DeliveryState.QUEUED.value, now, now) for q in queued],
            )
            self._move(job_id, (JobState.RUNNING,), JobState.DONE, outcome=Outcome(outcome).value, **record)
            self._settle(job_id)

    # -- deliveries ----------------------------------------------------------------------------------------------
    def _settle(self, job_id: int) -> None:
        """The one place a job's delivery progress changes: derived from its delivery rows."""
        states = {DeliveryState(r[0]) for r in self._db.execute("SELECT DISTINCT state FROM deliveries WHERE job_id = ?", (job_id,))}
        self._db.execute("UPDATE jobs SET delivery = ?, updated_at = ? WHERE id = ?", (job_delivery(states).value, time.time(), job_id))

    def due_deliveries(self, now: float) -> list[DeliveryRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM deliveries WHERE state = ? AND next_attempt_at <= ? ORDER BY id", (DeliveryState.QUEUED.value, now)
            ).fetchall()
        return [_delivery(r) for r in rows]

    def deliveries(self, job_id: int) -> list[DeliveryRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM deliveries WHERE job_id = ? ORDER BY id", (job_id,)).fetchall()
        return [_delivery(r) for r in rows]

    def update_delivery(self, delivery_id: int, state: DeliveryState, attempts: int, next_attempt_at: float, last_error: str | None) -> None:
        """Record one attempt's result; the job's delivery progress follows in the same transaction."""
        with self._transaction():
            self._db.execute(
                "UPDATE deliveries SET state = ?, attempts = ?, next_attempt_at = ?, last_error = ?, updated_at = ? WHERE id = ?",
                (DeliveryState(state).value, attempts, next_attempt_at, last_error, time.time(), delivery_id),
            )
            row = self._db.execute("SELECT job_id FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
            if row is None:
                raise ValueError(f"delivery_id: no delivery {delivery_id}")
            self._settle(row[0])

    def requeue_dead(self, job_id: int | None = None) -> int:
        """Move parked (dead) deliveries back to the queue; returns how many."""
        with self._transaction():
            query = "SELECT id, job_id FROM deliveries WHERE state = ?"
            params: tuple = (DeliveryState.DEAD.value,)
            if job_id is not None:
                query += " AND job_id = ?"
                params += (job_id,)
            rows = self._db.execute(query, params).fetchall()
            now = time.time()
            self._db.executemany(
                "UPDATE deliveries SET state = ?, attempts = 0, next_attempt_at = ?, updated_at = ? WHERE id = ?",
                [(DeliveryState.QUEUED.value, now, now, r[0]) for r in rows],
            )
            for job in {r[1] for r in rows}:
                self._settle(job)
            return len(rows)


def _job(row: sqlite3.Row) -> Job:
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


def _finished(row: sqlite3.Row) -> FinishedStudy:
    versions = tuple(sorted(int(v) for v in str(row["versions"]).split(",")))
    return FinishedStudy(row["study_uid"], row["upto_seq"], row["last_activity"], versions)


def _delivery(row: sqlite3.Row) -> DeliveryRecord:
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
