"""Follow-up: each kidney's volumes against the patient's latest comparable earlier result.

A prior is comparable for a structure and side where it measured that structure on that side, its QC passed for the
structure, and the same algorithm (name and version) made it; or a reader gave that volume (the history gives a study
by its reader's volumes where it has them: a reference whatever model measures the study compared). Priors that are newer than the one compared, or that
stand alone, and are not comparable are named with why, never compared.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from dicomnode.measured import HistoryEntry
from dicomnode.renal import SIDES

DAYS_PER_YEAR = 365.25


@dataclass(frozen=True)
class Change:
    """One structure on one side against its prior."""

    structure: str
    side: str
    prior_study_uid: str
    prior_date: dt.date
    prior_ml: float
    current_ml: float
    days: int  # from the prior's study date to this one's

    @property
    def change_ml(self) -> float:
        return self.current_ml - self.prior_ml

    @property
    def change_percent(self) -> float:
        return 100.0 * self.change_ml / self.prior_ml

    @property
    def ml_per_year(self) -> float:
        return self.change_ml * DAYS_PER_YEAR / self.days


@dataclass(frozen=True)
class NotCompared:
    """An earlier result of the patient that a structure was not compared with, and why."""

    prior_study_uid: str
    prior_date: dt.date | None
    structure: str
    why: str

    def __str__(self) -> str:
        when = self.prior_date.isoformat() if self.prior_date else "an unknown date"
        return f"Renal {self.structure} not compared with the study of {when} ({self.prior_study_uid}): {self.why}"


@dataclass(frozen=True)
class Point:
    """One volume on the patient's time line (for the summary page's chart)."""

    date: dt.date
    structure: str
    side: str
    ml: float
    comparable: bool  # False: its QC failed or another algorithm made it
    current: bool  # this study's


@dataclass(frozen=True)
class FollowUp:
    """This study's volumes against the patient's earlier results."""

    changes: tuple[Change, ...] = ()
    not_compared: tuple[NotCompared, ...] = ()
    points: tuple[Point, ...] = ()  # this study and every dated prior, oldest first

    def change(self, structure: str, side: str) -> Change | None:
        return next((c for c in self.changes if (c.structure, c.side) == (structure, side)), None)

    def lines(self) -> list[str]:
        """One line per change and per prior not compared, for logs and pages."""
        found = [
            f"{c.side.capitalize()} renal {c.structure}: {c.change_ml:+.1f} ml ({c.change_percent:+.1f} %, {c.ml_per_year:+.1f} ml/year)"
            f" since {c.prior_date.isoformat()}"
            for c in self.changes
        ]
        return found + [str(n) for n in self.not_compared]


def study_date(value: str) -> dt.date | None:
    """A DICOM DA value (YYYYMMDD) as a date; None where it is empty or not a date."""
    try:
        return dt.datetime.strptime(value.strip(), "%Y%m%d").date()
    except ValueError:
        return None


def _why_not(prior: HistoryEntry, current: HistoryEntry, structure: str, side: str) -> str:
    """Why ``prior`` cannot be compared with ``current`` for ``structure`` on ``side``; "" where it can."""
    if (structure, side) in prior.corrected:
        return ""  # a reader's volume: the reference, whatever model measured either study
    if structure not in prior.qc_passed:
        return "its QC failed" + (" (withheld)" if prior.withheld else " (sent for review)")
    if prior.algorithms.get(structure) != current.algorithms.get(structure):
        name, version = prior.algorithms.get(structure, ("unknown", ""))
        return f"made by another model ({name} {version})".replace(" )", ")")
    if (structure, side) not in prior.volumes:
        return f"no {side} renal {structure} measured"
    return ""


def compare(current: HistoryEntry, priors: list[HistoryEntry], structures: tuple[str, ...]) -> FollowUp:
    """Each of ``structures`` on each side ``current`` measured against the latest earlier comparable prior; priors
    of the same study, or not dated before this study, are left out."""
    today = study_date(current.study_date)
    if today is None:
        return FollowUp()
    dated = [(day, p) for p in priors if p.study_uid != current.study_uid and (day := study_date(p.study_date)) is not None and day < today]
    dated.sort(key=lambda pair: (pair[0], pair[1].recorded_at))
    changes: list[Change] = []
    not_compared: dict[tuple[str, str], NotCompared] = {}
    for structure in structures:
        for side in SIDES:
            if (structure, side) not in current.volumes:
                continue
            for day, prior in reversed(dated):
                why = _why_not(prior, current, structure, side)
                if not why:
                    ml = prior.volumes[(structure, side)]
                    changes.append(Change(structure, side, prior.study_uid, day, ml, current.volumes[(structure, side)], (today - day).days))
                    break
                not_compared.setdefault((prior.study_uid, structure), NotCompared(prior.study_uid, day, structure, why))
    points = [
        Point(day, structure, side, ml, not _why_not(p, current, structure, side), False)
        for day, p in dated
        for (structure, side), ml in p.volumes.items()
        if structure in structures
    ]
    points += [Point(today, s, side, ml, True, True) for (s, side), ml in current.volumes.items() if s in structures]
    return FollowUp(tuple(changes), tuple(not_compared.values()), tuple(points) if dated else ())
