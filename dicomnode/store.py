"""SQLite (WAL) index of received instances, refusals, jobs and deliveries."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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

#: Job states. pending -> running -> sending -> done; or no_result / failed; delivery_failed when a send is parked.
PENDING, RUNNING, SENDING, DONE, NO_RESULT, FAILED, DELIVERY_FAILED = (
    "pending", "running", "sending", "done", "no_result", "failed", "delivery_failed",
)
#: Delivery states.
QUEUED, SENT, DEAD = "queued", "sent", "dead"


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
    state: str
    series_uid: str | None
    verdict: str | None
    reasons: list[str]
    error: str | None
    measurements: dict | None
    timings: dict[str, float]
    created_at: float
    updated_at: float
    outcome: str | None = None  # done (a result), no_result or failed; the state then tracks delivery


@dataclass(frozen=True)
class DeliveryRecord:
    """One result file to be sent to one destination."""

    id: int
    job_id: int
    destination: str
    path: Path
    sop_uid: str
    state: str
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
            columns = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
            if "outcome" not in columns:  # databases made before the outcome was kept apart from the state
                self._db.execute("ALTER TABLE jobs ADD COLUMN outcome TEXT")

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
                "INSERT OR IGNORE INTO instances (sop_uid, study_uid, series_uid, sop_class_uid, path, calling_ae, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
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
            rows = self._db.execute(
                "SELECT * FROM instances WHERE study_uid = ? AND seq <= ? ORDER BY seq", (study_uid, upto_seq)
            ).fetchall()
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

    # -- jobs ----------------------------------------------------------------------------------------------------
    @contextmanager
    def _transaction(self):
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
                (study_uid, version, upto_seq, PENDING, now, now),
            )
        return self.job(cursor.lastrowid)

    def job(self, job_id: int) -> Job:
        with self._lock:
            return _job(self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def jobs(self, state: str | None = None) -> list[Job]:
        with self._lock:
            if state is None:
                rows = self._db.execute("SELECT * FROM jobs ORDER BY id").fetchall()
            else:
                rows = self._db.execute("SELECT * FROM jobs WHERE state = ? ORDER BY id", (state,)).fetchall()
        return [_job(r) for r in rows]

    def update_job(self, job_id: int, **values: object) -> None:
        """Set columns of a job; lists and dicts are stored as JSON."""
        with self._lock:
            self._set_job(job_id, values)

    def _set_job(self, job_id: int, values: dict[str, object]) -> None:
        encoded = {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in values.items()}
        encoded["updated_at"] = time.time()
        columns = ", ".join(f"{k} = ?" for k in encoded)
        self._db.execute(f"UPDATE jobs SET {columns} WHERE id = ?", (*encoded.values(), job_id))

    def requeue_interrupted(self) -> list[Job]:
        """Jobs left running by a crash go back to pending; returns them."""
        with self._lock:
            interrupted = self.jobs(RUNNING)
            self._db.execute("UPDATE jobs SET state = ?, updated_at = ? WHERE state = ?", (PENDING, time.time(), RUNNING))
        return interrupted

    # -- deliveries ----------------------------------------------------------------------------------------------
    def finish_job_with_results(self, job_id: int, results: list[tuple[str, Path]], destinations: list[str], **values: object) -> None:
        """Record the job's outcome and queue each result for each destination, in one transaction.

        ``values["state"]`` is the processing outcome; it is kept as ``outcome`` while the state moves on to
        sending and done as the results are delivered.
        """
        now = time.time()
        values.setdefault("outcome", values.get("state"))
        with self._transaction():
            for sop_uid, path in results:
                for destination in destinations:
                    self._db.execute(
                        "INSERT OR IGNORE INTO deliveries (job_id, destination, path, sop_uid, state, next_attempt_at, updated_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (job_id, destination, str(path), sop_uid, QUEUED, now, now),
                    )
            if results and destinations:
                values["state"] = SENDING
            self._set_job(job_id, values)

    def due_deliveries(self, now: float) -> list[DeliveryRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM deliveries WHERE state = ? AND next_attempt_at <= ? ORDER BY id", (QUEUED, now)
            ).fetchall()
        return [_delivery(r) for r in rows]

    def deliveries(self, job_id: int) -> list[DeliveryRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM deliveries WHERE job_id = ? ORDER BY id", (job_id,)).fetchall()
        return [_delivery(r) for r in rows]

    def update_delivery(self, delivery_id: int, state: str, attempts: int, next_attempt_at: float, last_error: str | None) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE deliveries SET state = ?, attempts = ?, next_attempt_at = ?, last_error = ?, updated_at = ? WHERE id = ?",
                (state, attempts, next_attempt_at, last_error, time.time(), delivery_id),
            )

    def requeue_dead(self, job_id: int | None = None) -> int:
        """Move parked (dead) deliveries back to the queue; returns how many."""
        with self._lock:
            query = "UPDATE deliveries SET state = ?, attempts = 0, next_attempt_at = ? WHERE state = ?"
            params: tuple = (QUEUED, time.time(), DEAD)
            if job_id is not None:
                query += " AND job_id = ?"
                params += (job_id,)
            count = self._db.execute(query, params).rowcount
            self._db.execute(
                "UPDATE jobs SET state = ? WHERE state = ? AND id IN (SELECT job_id FROM deliveries WHERE state = ?)",
                (SENDING, DELIVERY_FAILED, QUEUED),
            )
            return count


def _job(row: sqlite3.Row) -> Job:
    return Job(
        row["id"], row["study_uid"], row["version"], row["upto_seq"], row["state"], row["series_uid"], row["verdict"],
        json.loads(row["reasons"]), row["error"], json.loads(row["measurements"]) if row["measurements"] else None,
        json.loads(row["timings"]), row["created_at"], row["updated_at"], row["outcome"],
    )


def _delivery(row: sqlite3.Row) -> DeliveryRecord:
    return DeliveryRecord(
        row["id"], row["job_id"], row["destination"], Path(row["path"]), row["sop_uid"], row["state"],
        row["attempts"], row["next_attempt_at"], row["last_error"],
    )
