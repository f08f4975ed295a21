"""Finished studies that retention may delete, their deletion, and the record of it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dicomnode.store.database import Database
from dicomnode.store.records import FinishedStudy, finished_from


class Purging:
    """Finished studies that retention may delete, their deletion, and the record of it."""

    db: Database

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
        return [finished_from(r) for r in self.db.query(self._FINISHED.replace("WHERE_CLAUSE", ""))]

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
            delete(paths, finished_from(rows[0]).versions)
        return len(paths)

    def purges(self) -> list[dict]:
        return [dict(r) for r in self.db.query("SELECT * FROM purges ORDER BY id")]
