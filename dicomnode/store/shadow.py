"""Shadow mode's record: for each live job a candidate model ran on, one row per structure and side with both
models' volumes and the Dice between their masks; and the agreement per structure over the last studies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Protocol

from dicomnode.renal import STRUCTURES
from dicomnode.store.database import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS shadow (
    id {id},
    job_id BIGINT NOT NULL,
    study_uid TEXT NOT NULL,
    live_model TEXT NOT NULL,
    candidate_model TEXT NOT NULL,
    structure TEXT NOT NULL,
    side TEXT NOT NULL,
    live_ml {real} NOT NULL,
    candidate_ml {real} NOT NULL,
    dice {real} NOT NULL,
    recorded_at {real} NOT NULL,
    UNIQUE (job_id, candidate_model, structure, side)
);
CREATE INDEX IF NOT EXISTS shadow_models ON shadow (candidate_model, live_model, job_id)
"""


class Compared(Protocol):
    """One structure of one kidney as both models measured it (``analysis/agreement.py``'s ``Agreement``)."""

    @property
    def structure(self) -> str: ...
    @property
    def side(self) -> str: ...
    @property
    def live_ml(self) -> float: ...
    @property
    def candidate_ml(self) -> float: ...
    @property
    def dice(self) -> float: ...


@dataclass(frozen=True)
class ShadowRecord:
    """A row of the shadow table."""

    job_id: int
    study_uid: str
    live_model: str
    candidate_model: str
    structure: str
    side: str
    live_ml: float
    candidate_ml: float
    dice: float
    recorded_at: float  # the database's clock


@dataclass(frozen=True)
class StructureAgreement:
    """How far a candidate's volumes of one structure (both sides) lay from the live model's over some studies:
    absolute differences in ml and in % of the live volume (a side the live model did not find has no %)."""

    structure: str
    studies: int
    kidneys: int  # rows: studies x sides found by either model
    mean_abs_diff_ml: float
    max_abs_diff_ml: float
    mean_abs_diff_percent: float | None
    max_abs_diff_percent: float | None
    mean_dice: float
    min_dice: float


class Shadow:
    """Shadow mode's rows, and the agreement over the last studies."""

    db: Database

    def record_shadow(self, job_id: int, study_uid: str, live_model: str, candidate_model: str, compared: Sequence[Compared]) -> None:
        """Record what the candidate gave for job ``job_id`` (a rerun of the job replaces its rows)."""
        rows = [(job_id, study_uid, live_model, candidate_model, c.structure, c.side, c.live_ml, c.candidate_ml, c.dice) for c in compared]
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM shadow WHERE job_id = ? AND candidate_model = ?", (job_id, candidate_model))
            tx.executemany(
                "INSERT INTO shadow (job_id, study_uid, live_model, candidate_model, structure, side, live_ml, candidate_ml, dice, recorded_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, {now})",
                rows,
            )

    def shadow_records(self, live_model: str, candidate_model: str, last_n: int | None = None) -> list[ShadowRecord]:
        """The rows of ``candidate_model`` beside ``live_model``, of its last ``last_n`` jobs (all where None), oldest
        job first."""
        if last_n is not None and last_n < 1:
            raise ValueError(f"last_n: must be at least 1, got {last_n}")
        models = (live_model, candidate_model)
        where = "live_model = ? AND candidate_model = ?"
        jobs = f"SELECT DISTINCT job_id FROM shadow WHERE {where} ORDER BY job_id DESC" + (" LIMIT ?" if last_n is not None else "")
        rows = self.db.query(
            f"SELECT * FROM shadow WHERE {where} AND job_id IN ({jobs}) ORDER BY job_id, id", (*models, *models, *(() if last_n is None else (last_n,)))
        )
        return [ShadowRecord(**{name: r[name] for name in ShadowRecord.__dataclass_fields__}) for r in rows]

    def shadow_agreement(self, live_model: str, candidate_model: str, last_n: int) -> list[StructureAgreement]:
        """Per structure (parenchyma, cortex, medulla), the agreement over the candidate's last ``last_n`` jobs;
        none where it has none."""
        records = self.shadow_records(live_model, candidate_model, last_n)
        found = []
        for structure in STRUCTURES:
            rows = [r for r in records if r.structure == structure]
            if not rows:
                continue
            ml = [abs(r.candidate_ml - r.live_ml) for r in rows]
            percent = [100 * abs(r.candidate_ml - r.live_ml) / r.live_ml for r in rows if r.live_ml > 0]
            dice = [r.dice for r in rows]
            mean_percent, max_percent = (fmean(percent), max(percent)) if percent else (None, None)
            studies = len({r.job_id for r in rows})
            found.append(StructureAgreement(str(structure), studies, len(rows), fmean(ml), max(ml), mean_percent, max_percent, fmean(dice), min(dice)))
        return found
