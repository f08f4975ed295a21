"""The tables of the node's database, and the migrations of databases made by older versions (both dialects)."""

from __future__ import annotations

from dicomnode.store.database import Database
from dicomnode.store.transitions import settle

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
    kind TEXT NOT NULL DEFAULT 'model',
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
CREATE INDEX IF NOT EXISTS deliveries_sop ON deliveries (sop_uid);
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


def migrate(db: Database) -> None:
    """Databases (SQLite or PostgreSQL) made before processing, outcome and delivery were kept apart (one
    ``state`` held all three), before leases, before the history kept volume ranges, or before jobs had a kind: their
    columns are added and their jobs' states split."""
    columns = {row["name"] for row in db.query(db.dialect.columns, ("jobs",))}
    delivery_columns = {row["name"] for row in db.query(db.dialect.columns, ("deliveries",))}
    history_columns = {row["name"] for row in db.query(db.dialect.columns, ("history",))}
    with db.transaction() as tx:
        if "ranges" not in history_columns:
            tx.execute("ALTER TABLE history ADD COLUMN ranges TEXT")
        if "claimed_by" not in delivery_columns:
            tx.execute("ALTER TABLE deliveries ADD COLUMN claimed_by TEXT")
            tx.execute("ALTER TABLE deliveries ADD COLUMN claimed_until {real}")
        if "kind" not in columns:
            tx.execute("ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'model'")
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
            settle(tx, row["id"])
