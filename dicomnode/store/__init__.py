"""What the node records: its index of received instances, refusals, jobs and deliveries, on SQLite (embedded) or
PostgreSQL (cluster mode, shared by several receivers, workers and senders); the SQL is written once (see
database.py). :class:`Store` is one class made of its parts, one module each: intake, jobs, deliveries, purging,
monitoring, readers' corrections, shadow runs and the measurement history; the records it gives are in ``records.py``,
their states in ``states.py``."""

from __future__ import annotations

from pathlib import Path

from dicomnode.store import corrections, history, shadow
from dicomnode.store.corrections import CorrectionRecord, Corrections, NewCorrection, StudyBusy
from dicomnode.store.database import Database, SqliteDatabase
from dicomnode.store.deliveries import Deliveries
from dicomnode.store.history import History
from dicomnode.store.instances import Intake
from dicomnode.store.jobs import Jobs, LeaseLost
from dicomnode.store.monitoring import Monitoring
from dicomnode.store.purging import Purging
from dicomnode.store.records import Counts, DeliveryRecord, FinishedStudy, Job, Queued, Superseded
from dicomnode.store.schema import SCHEMA, migrate
from dicomnode.store.shadow import Shadow

__all__ = ["CorrectionRecord", "Counts", "DeliveryRecord", "FinishedStudy", "Job", "LeaseLost", "NewCorrection", "Queued", "Store", "StudyBusy", "Superseded"]


class Store(Intake, Jobs, Deliveries, Corrections, Purging, Monitoring, Shadow):
    """Thread-safe access to the node's database."""

    def __init__(self, database: Database | Path, withdraw_by_correction: bool = False) -> None:
        """``withdraw_by_correction``: a reader's correction replaces the model's results of its study (rejection notes
        follow), as ``corrections.withdraw_model_results`` says; else they stay."""
        self.db: Database = SqliteDatabase(database) if isinstance(database, Path) else database
        self.withdraw_by_correction = withdraw_by_correction
        self.db.script(SCHEMA)
        self.db.script(history.SCHEMA)
        self.db.script(corrections.SCHEMA)
        self.db.script(shadow.SCHEMA)
        migrate(self.db)
        self.history = History(self.db)

    def close(self) -> None:
        self.db.close()

    def now(self) -> float:
        """The database's clock (one clock for every machine of a cluster)."""
        return float(self.db.query("SELECT {now} AS now")[0]["now"])
