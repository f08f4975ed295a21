"""Readers' corrections: a SEG taken as the correction of a study's result is indexed with its instance and its job
(a correction job, which runs no model, covering the study's instances up to the SEG) in one transaction, so that
it never starts a model run of its study."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dicomnode.measured import Patient
from dicomnode.store.database import Database, Row
from dicomnode.store.instances import INSERT_INSTANCE
from dicomnode.store.records import Job, job_from
from dicomnode.store.states import JobKind, JobState, Outcome

SCHEMA = """
CREATE TABLE IF NOT EXISTS corrections (
    id {id},
    job_id BIGINT NOT NULL REFERENCES jobs (id),
    corrects_job BIGINT NOT NULL REFERENCES jobs (id),
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_uid TEXT UNIQUE NOT NULL,
    path TEXT NOT NULL,
    reader TEXT NOT NULL,
    created TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    issuer TEXT NOT NULL,
    withdraws INTEGER NOT NULL,
    site_case TEXT NOT NULL DEFAULT '',
    received_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS corrections_study ON corrections (study_uid);
CREATE INDEX IF NOT EXISTS corrections_patient ON corrections (patient_id, issuer)
"""


class StudyBusy(ValueError):
    """A correction of a study whose result is about to change: instances came after its last run, or a run is due."""


@dataclass(frozen=True)
class CorrectionRecord:
    """A reader's SEG taken as a correction: its file, who made it and when, the job that made the result it corrects
    (``corrects_job``, whose ``series_uid`` it segments) and its own job."""

    id: int
    job_id: int
    corrects_job: int
    study_uid: str
    series_uid: str
    sop_uid: str
    path: Path
    reader: str
    created: str
    calling_ae: str
    patient: Patient
    withdraws: bool  # it replaces the model's results of its study (``corrections.withdraw_model_results`` when taken)
    site_case: str  # the name of its site case; "" where none was kept
    received_at: float


@dataclass(frozen=True)
class NewCorrection:
    """What the receiver knows of a SEG it takes as a correction."""

    sop_uid: str
    study_uid: str
    seg_series_uid: str
    sop_class_uid: str
    path: Path
    calling_ae: str
    corrects: Job
    reader: str
    created: str
    patient: Patient


class Corrections:
    """Readers' corrections and the jobs that take them."""

    db: Database
    withdraw_by_correction: bool

    def corrected_job(self, study_uid: str) -> Job | None:
        """The study's latest model run, where it is done and measured a series (with a result or withheld): the one a
        reader's SEG can correct; None where there is none, or the latest run measured nothing."""
        rows = self.db.query("SELECT * FROM jobs WHERE study_uid = ? AND kind = ? ORDER BY version DESC LIMIT 1", (study_uid, JobKind.MODEL.value))
        job = job_from(rows[0]) if rows else None
        if job is None or job.state is not JobState.DONE or job.outcome is Outcome.FAILED or job.series_uid is None or job.measurements is None:
            return None
        return job

    def add_correction(self, new: NewCorrection) -> Job | None:
        """Index the SEG's instance, its correction and a pending correction job (the study's next version, covering
        the study's instances up to the SEG), in one transaction; None, with nothing added, where the instance is
        indexed already. :class:`StudyBusy`, with nothing added, where the result it corrects is about to change."""
        with self.db.transaction() as tx:
            if tx.dialect.completion_lock:
                tx.query(tx.dialect.completion_lock)
            busy = tx.query(
                "SELECT 1 AS found FROM jobs WHERE study_uid = ? AND kind = ? AND (state != ? OR version > ?)"
                " UNION ALL SELECT 1 AS found FROM instances WHERE study_uid = ? AND seq > (SELECT MAX(upto_seq) FROM jobs WHERE study_uid = ?)",
                (new.study_uid, JobKind.MODEL.value, JobState.DONE.value, new.corrects.version, new.study_uid, new.study_uid),
            )
            if busy:
                raise StudyBusy(f"study {new.study_uid} is being received or processed again; its new result is the one to correct")
            added = tx.query(
                INSERT_INSTANCE + " RETURNING seq", (new.sop_uid, new.study_uid, new.seg_series_uid, new.sop_class_uid, str(new.path), new.calling_ae)
            )
            if not added:
                return None
            [latest] = tx.query("SELECT COALESCE(MAX(version), 0) AS v FROM jobs WHERE study_uid = ?", (new.study_uid,))
            [row] = tx.query(
                "INSERT INTO jobs (study_uid, version, upto_seq, state, kind, series_uid, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, {now}, {now}) RETURNING *",
                (new.study_uid, latest["v"] + 1, added[0]["seq"], JobState.PENDING.value, JobKind.CORRECTION.value, new.corrects.series_uid),
            )
            job = job_from(row)
            tx.execute(
                "INSERT INTO corrections (job_id, corrects_job, study_uid, series_uid, sop_uid, path, reader, created, calling_ae, patient_id, issuer,"
                " withdraws, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {now})",
                (
                    *(job.id, new.corrects.id, new.study_uid, new.corrects.series_uid, new.sop_uid, str(new.path), new.reader, new.created),
                    *(new.calling_ae, new.patient.patient_id, new.patient.issuer, int(self.withdraw_by_correction)),
                ),
            )
        return job

    def correction_of(self, job_id: int) -> CorrectionRecord:
        """The correction job ``job_id`` takes; ValueError where it takes none."""
        rows = self.db.query("SELECT * FROM corrections WHERE job_id = ?", (job_id,))
        if not rows:
            raise ValueError(f"job_id: job {job_id} takes no correction")
        return _record(rows[0])

    def corrections(self) -> list[CorrectionRecord]:
        return [_record(r) for r in self.db.query("SELECT * FROM corrections ORDER BY id")]

    def kept_site_case(self, job_id: int, name: str) -> None:
        """Record that correction job ``job_id`` kept its site case as ``name``."""
        self.db.execute("UPDATE corrections SET site_case = ? WHERE job_id = ?", (name, job_id))

    def forget_site_cases(self, patient: Patient) -> list[str]:
        """The names of ``patient``'s site cases, forgotten here (the caller deletes their files)."""
        with self.db.transaction() as tx:
            rows = tx.query("SELECT site_case FROM corrections WHERE patient_id = ? AND issuer = ? AND site_case != ''", (patient.patient_id, patient.issuer))
            tx.execute("UPDATE corrections SET site_case = '' WHERE patient_id = ? AND issuer = ?", (patient.patient_id, patient.issuer))
        return [r["site_case"] for r in rows]


def _record(row: Row) -> CorrectionRecord:
    return CorrectionRecord(
        row["id"],
        row["job_id"],
        row["corrects_job"],
        row["study_uid"],
        row["series_uid"],
        row["sop_uid"],
        Path(row["path"]),
        row["reader"],
        row["created"],
        row["calling_ae"],
        Patient(row["patient_id"], row["issuer"]),
        bool(row["withdraws"]),
        row["site_case"],
        float(row["received_at"]),
    )
