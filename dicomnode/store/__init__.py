"""What the node records: its index of received instances, refusals, jobs and deliveries, on SQLite (embedded) or
PostgreSQL (cluster mode, shared by several receivers, workers and senders); the SQL is written once (see
database.py). :class:`Store` is one class made of its parts, one module each: intake, jobs, deliveries, purging,
monitoring, and the measurement history; the records it gives are in ``records.py``, their states in ``states.py``."""

from __future__ import annotations

from pathlib import Path

from dicomnode.store import history
from dicomnode.store.database import Database, SqliteDatabase
from dicomnode.store.deliveries import Deliveries
from dicomnode.store.history import History
from dicomnode.store.instances import Intake
from dicomnode.store.jobs import Jobs, LeaseLost
from dicomnode.store.monitoring import Monitoring
from dicomnode.store.purging import Purging
from dicomnode.store.records import Counts, DeliveryRecord, FinishedStudy, Job, Queued, Superseded
from dicomnode.store.schema import SCHEMA, migrate

__all__ = ["Counts", "DeliveryRecord", "FinishedStudy", "Job", "LeaseLost", "Queued", "Store", "Superseded"]


class Store(Intake, Jobs, Deliveries, Purging, Monitoring):
    """Thread-safe access to the node's database."""

    def __init__(self, database: Database | Path) -> None:
        self.db: Database = SqliteDatabase(database) if isinstance(database, Path) else database
        self.db.script(SCHEMA)
        self.db.script(history.SCHEMA)
        migrate(self.db)
        self.history = History(self.db)

    def close(self) -> None:
        self.db.close()

    def now(self) -> float:
        """The database's clock (one clock for every machine of a cluster)."""
        return float(self.db.query("SELECT {now} AS now")[0]["now"])
