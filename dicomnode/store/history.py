"""The measurement history: one row per study with a result, sent or withheld, keyed by the patient (Patient ID and
Issuer of Patient ID), kept when retention deletes the study's images; only the patient's own purge deletes it.

A study processed again (a later version of its job) replaces its row, so a study sent twice counts once; a later
version without measurements removes it, as the results it replaces are withdrawn from the PACS. A reader's
correction of a study's result is kept beside the node's row, in a table of its own (a later correction replaces
it); follow-up compares a study by the reader's volumes where it has them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

from dicomnode.measured import HistoryEntry, Patient, Source
from dicomnode.renal import SIDES, STRUCTURES
from dicomnode.store.database import Database, Row, Session

#: (structure, side) of every volume a row holds, in column order.
VOLUME_KEYS: tuple[tuple[str, str], ...] = tuple((structure, side) for structure in STRUCTURES for side in SIDES)
VOLUME_COLUMNS = tuple(f"{structure}_{side}_ml" for structure, side in VOLUME_KEYS)
#: Each volume's range (segment/band.py), as the export names its columns: minimum, then maximum.
RANGE_COLUMNS = tuple(f"{structure}_{side}_{bound}_ml" for structure, side in VOLUME_KEYS for bound in ("min", "max"))

#: Each source's table.
TABLES = {Source.NODE: "history", Source.READER: "reader_history"}

_TABLE = (
    """
CREATE TABLE IF NOT EXISTS {table} (
    id {id},
    patient_id TEXT NOT NULL,
    issuer TEXT NOT NULL,
    study_uid TEXT UNIQUE NOT NULL,
    study_date TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    job_id BIGINT NOT NULL,
    sent TEXT NOT NULL,
    verdict TEXT NOT NULL,
    qc_passed TEXT NOT NULL,
    qc_findings TEXT NOT NULL,
    algorithms TEXT NOT NULL,
"""
    + "".join(f"    {column} {{real}},\n" for column in VOLUME_COLUMNS)
    + """    left_split {real},
    ranges TEXT,
    timings TEXT NOT NULL,
    recorded_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS {table}_patient ON {table} (patient_id, issuer);
"""
)
SCHEMA = (
    "".join(_TABLE.replace("{table}", table) for table in TABLES.values())
    + """CREATE TABLE IF NOT EXISTS patient_purges (
    id {id},
    purged_at {real} NOT NULL,
    results INTEGER NOT NULL,
    reason TEXT NOT NULL
)
"""
)


def replace(tx: Session, study_uid: str, job_id: int, entry: HistoryEntry | None, source: Source) -> None:
    """Make ``entry`` the row of ``study_uid`` (from job ``job_id``) in ``source``'s table, or remove the row where the
    job gave no measurements; called in the transaction that records the job's outcome."""
    table = TABLES[source]
    tx.execute(f"DELETE FROM {table} WHERE study_uid = ?", (study_uid,))
    if entry is None:
        return
    columns = ("patient_id", "issuer", "study_uid", "study_date", "series_uid", "job_id", "sent", "verdict", "qc_passed", "qc_findings", "algorithms")
    values: list[object] = [entry.patient.patient_id, entry.patient.issuer, study_uid, entry.study_date, entry.series_uid, job_id]
    values += [json.dumps(list(entry.sent)), entry.verdict, json.dumps(list(entry.qc_passed)), json.dumps(list(entry.qc_findings))]
    values.append(json.dumps({structure: list(made_by) for structure, made_by in entry.algorithms.items()}))
    values += [entry.volumes.get(key) for key in VOLUME_KEYS]
    values += [entry.left_split, json.dumps(entry.timings), json.dumps([[*key, *bounds] for key, bounds in entry.ranges.items()])]
    names = (*columns, *VOLUME_COLUMNS, "left_split", "timings", "ranges")
    tx.execute(f"INSERT INTO {table} ({', '.join(names)}, recorded_at) VALUES ({', '.join('?' for _ in names)}, {{now}})", values)


class History:
    """Reading the history, and the patient purge."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def of_patient(self, patient: Patient) -> list[HistoryEntry]:
        """Every result of ``patient``, oldest study first, one per study: where a reader corrected it, the reader's
        volumes and, for what the reader left out, the node's; none for a blank Patient ID, which names nobody."""
        if not patient.patient_id.strip():
            return []
        found = self._rows("WHERE patient_id = ? AND issuer = ?", (patient.patient_id, patient.issuer))
        readers = {e.study_uid: e for e in found if e.source is Source.READER}
        nodes = {e.study_uid: e for e in found if e.source is Source.NODE}
        kept = [e for e in found if e.source is Source.READER or e.study_uid not in readers]
        return [_merged(nodes.get(e.study_uid), e) if e.source is Source.READER else e for e in kept]

    def of_study(self, study_uid: str) -> HistoryEntry | None:
        """The study's result: its reader's correction where it has one, else the node's."""
        found = self.both_of_study(study_uid)
        return found[-1] if found else None

    def both_of_study(self, study_uid: str) -> list[HistoryEntry]:
        """The node's row of the study and its reader's correction, those it has, in that order."""
        return self._rows("WHERE study_uid = ?", (study_uid,))

    def studies_recorded(self, study_uids: list[str]) -> set[str]:
        """Which of ``study_uids`` have a row in the history."""
        if not study_uids:
            return set()
        where = f"WHERE study_uid IN ({', '.join('?' for _ in study_uids)})"
        return {r["study_uid"] for table in TABLES.values() for r in self.db.query(f"SELECT study_uid FROM {table} {where}", study_uids)}

    def entries(self, since: str = "", qc_passed: bool = False) -> list[HistoryEntry]:
        """Every result, the node's and the readers', by study date then when it was recorded: those of studies on or
        after ``since`` (YYYYMMDD), and with ``qc_passed`` only those whose every structure measured passed QC."""
        found = self._rows("WHERE study_date >= ?", (since,))
        return [e for e in found if not qc_passed or e.passed]

    def purge_patient(self, patient: Patient, reason: str) -> int:
        """Delete every result of ``patient``, the node's and the readers', and log the purge (when, how many, why:
        not whom); returns how many."""
        with self.db.transaction() as tx:
            count = sum(
                tx.execute(f"DELETE FROM {table} WHERE patient_id = ? AND issuer = ?", (patient.patient_id, patient.issuer)) for table in TABLES.values()
            )
            tx.execute("INSERT INTO patient_purges (purged_at, results, reason) VALUES ({now}, ?, ?)", (count, reason))
        return count

    def _rows(self, where: str, params: Sequence[object]) -> list[HistoryEntry]:
        """Both tables' rows matching ``where``, by study date, when recorded (the node's first on a tie) and id."""
        found = [_entry(r, source) for source, table in TABLES.items() for r in self.db.query(f"SELECT * FROM {table} {where}", params)]
        return sorted(found, key=lambda e: (e.study_date, e.recorded_at, e.source is Source.READER, e.job_id))

    def purges(self) -> list[dict]:
        return [dict(r) for r in self.db.query("SELECT * FROM patient_purges ORDER BY id")]


def _merged(node: HistoryEntry | None, reader: HistoryEntry) -> HistoryEntry:
    """A study's reader row completed with the node's volumes of what the reader did not give (which keep the node's
    QC and model, and are compared only as the node's would be)."""
    if node is None:
        return reader
    volumes = {**node.volumes, **reader.volumes}
    ranges = {key: bounds for key, bounds in node.ranges.items() if key not in reader.volumes}
    return dataclasses.replace(reader, volumes=volumes, ranges=ranges, qc_passed=node.qc_passed, qc_findings=node.qc_findings, algorithms=node.algorithms)


def _entry(row: Row, source: Source) -> HistoryEntry:
    volumes = {key: float(row[column]) for key, column in zip(VOLUME_KEYS, VOLUME_COLUMNS) if row[column] is not None}
    return HistoryEntry(
        patient=Patient(row["patient_id"], row["issuer"]),
        study_uid=row["study_uid"],
        study_date=row["study_date"],
        series_uid=row["series_uid"],
        volumes=volumes,
        qc_passed=tuple(json.loads(row["qc_passed"])),
        qc_findings=tuple(json.loads(row["qc_findings"])),
        sent=tuple(json.loads(row["sent"])),
        algorithms={structure: (made_by[0], made_by[1]) for structure, made_by in json.loads(row["algorithms"]).items()},
        verdict=row["verdict"],
        left_split=row["left_split"],
        timings=json.loads(row["timings"]),
        ranges={(structure, side): (float(low), float(high)) for structure, side, low, high in json.loads(row["ranges"] or "[]")},
        job_id=int(row["job_id"]),
        recorded_at=float(row["recorded_at"]),
        source=source,
        corrected=frozenset(volumes) if source is Source.READER else frozenset(),
    )
