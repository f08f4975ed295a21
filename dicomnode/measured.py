"""One study's renal result as the node keeps and compares it: the patient it belongs to, and its entry in the
measurement history (``store/history.py`` keeps it, ``analysis/followup.py`` compares it, the export writes it)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Patient:
    """A patient as the images name them: Patient ID (0010,0020) within Issuer of Patient ID (0010,0021)."""

    patient_id: str
    issuer: str = ""


class Source(str, enum.Enum):
    """Whose volumes an entry holds: the node's model, or a reader who corrected its segmentation."""

    NODE = "node"
    READER = "reader"


@dataclass(frozen=True)
class HistoryEntry:
    """One study's result as the history keeps it."""

    patient: Patient
    study_uid: str
    study_date: str  # YYYYMMDD as in the images; "" where they give none
    series_uid: str
    volumes: dict[tuple[str, str], float]  # (structure, side) -> ml, for each kidney found
    qc_passed: tuple[str, ...]  # structures whose QC checks passed
    qc_findings: tuple[str, ...]
    sent: tuple[str, ...]  # structures sent to the destinations; () where the result was withheld
    algorithms: dict[str, tuple[str, str]]  # structure -> (name, version) of what made it
    verdict: str
    left_split: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    ranges: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)  # (structure, side) -> (min, max) ml
    source: Source = Source.NODE
    corrected: frozenset[tuple[str, str]] = frozenset()  # (structure, side) whose volume a reader gave
    job_id: int = 0  # set by the store
    recorded_at: float = 0.0  # the database's clock, set by the store

    @property
    def withheld(self) -> bool:
        return not self.sent

    @property
    def passed(self) -> bool:
        """Whether every structure measured passed QC."""
        return {structure for structure, _ in self.volumes} <= set(self.qc_passed)
