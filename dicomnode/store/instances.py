"""Received instances, refusals, the receivers and their open associations, and the studies waiting to complete."""

from __future__ import annotations

from pathlib import Path

from dicomnode.instance import Instance
from dicomnode.store.database import Database, Row, Session

#: Index one stored instance (sop_uid, study_uid, series_uid, sop_class_uid, path, calling_ae) with the database's
#: clock; nothing where its SOP Instance UID is indexed already.
INSERT_INSTANCE = (
    "INSERT INTO instances (sop_uid, study_uid, series_uid, sop_class_uid, path, calling_ae, received_at)"
    " VALUES (?, ?, ?, ?, ?, ?, {now}) ON CONFLICT DO NOTHING"
)


class Intake:
    """Received instances, refusals, the receivers and their open associations, and the studies waiting to complete."""

    db: Database

    def has_instance(self, sop_uid: str) -> bool:
        return bool(self.db.query("SELECT 1 AS found FROM instances WHERE sop_uid = ?", (sop_uid,)))

    def add_instance(self, sop_uid: str, study_uid: str, series_uid: str, sop_class_uid: str, path: Path, calling_ae: str) -> bool:
        """Index a stored instance with the database's clock; False if its SOP Instance UID was already indexed."""
        return self.db.execute(INSERT_INSTANCE, (sop_uid, study_uid, series_uid, sop_class_uid, str(path), calling_ae)) == 1

    def is_own_result(self, sop_uid: str) -> bool:
        """Whether ``sop_uid`` is one of the node's own results (a PACS that routes them back)."""
        return bool(self.db.query("SELECT 1 AS found FROM deliveries WHERE sop_uid = ?", (sop_uid,)))

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


def _interrupt(tx: Session, where: str, params: tuple, reason: str) -> None:
    """Mark the studies of the associations selected by ``where`` as interrupted (the first reason stays)."""
    tx.execute(
        f"INSERT INTO interrupted (study_uid, since, reason) SELECT DISTINCT study_uid, {{now}}, ? FROM associations WHERE {where}"
        " ON CONFLICT (study_uid) DO NOTHING",
        (reason, *params),
    )
