"""Totals for monitoring, the database's health and the recent jobs."""

from __future__ import annotations

from dicomnode.store.database import Database
from dicomnode.store.records import Counts, Job, job_from


class Monitoring:
    """Totals for monitoring, the database's health and the recent jobs."""

    db: Database

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
        return [job_from(r) for r in self.db.query("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))]
