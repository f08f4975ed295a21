"""The report plan: decided once after QC, what is delivered for each side and structure, and why anything is absent.

The SEG, SR and Secondary Capture writers, the job record and the measurement history all read the plan; none of
them decides QC on its own. With ``qc.per_kidney`` (default) a kidney whose own checks pass is delivered whatever
the other side shows; study-level findings (stray prediction, sides, phase, identity) still concern both sides.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dicomnode.analysis.measure import Measurements
from dicomnode.analysis.qc import Finding, QCReport, Rule
from dicomnode.config import QCConfig
from dicomnode.options import OnFail
from dicomnode.renal import SIDES, STRUCTURES, Side, Structure


class Absence(str, enum.Enum):
    """Why a side's structure is not reported."""

    NOT_FOUND = "no kidney was found on this side"
    CUT_OFF = "cut off by the field of view"
    WITHHELD = "withheld by QC"
    NOT_MEASURED = "not measured in this phase"
    ATYPICAL = "not measured: atypical position or fusion"


@dataclass(frozen=True)
class Absent:
    """Structures of one side that are not reported, why, and the detail a reader needs (a finding, a lower bound)."""

    side: Side
    structures: tuple[Structure, ...]
    reason: Absence
    detail: str = ""

    def __str__(self) -> str:
        what = "kidney" if self.structures == STRUCTURES else f"renal {_listed(list(self.structures))}"
        return f"{self.side.capitalize()} {what} not reported: {self.reason.value}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class ReportPlan:
    """What one study's results deliver: (structure, side) pairs, what is absent and why, and whether what is
    delivered failed QC and is sent for review (``qc.on_fail: flag``)."""

    delivered: tuple[tuple[Structure, Side], ...]
    absent: tuple[Absent, ...]
    review: bool
    qc_verdict: str

    @property
    def structures(self) -> tuple[Structure, ...]:
        """The structures delivered on at least one side, in STRUCTURES order."""
        return tuple(s for s in STRUCTURES if any(s == d for d, _ in self.delivered))

    @property
    def sides(self) -> tuple[Side, ...]:
        return tuple(side for side in SIDES if any(side == s for _, s in self.delivered))

    def delivers(self, structure: Structure, side: Side) -> bool:
        return (structure, side) in self.delivered

    @property
    def both_kidneys(self) -> bool:
        """Whether both kidneys' parenchyma is delivered: only then are a total and the split function reported."""
        return all(self.delivers(Structure.PARENCHYMA, side) for side in SIDES)

    def lines(self) -> list[str]:
        return [str(a) for a in self.absent]


def decide(measurements: Measurements, report: QCReport, allowed: tuple[Structure, ...], limits: QCConfig, not_allowed_why: str = "") -> ReportPlan:
    """The plan for a measured study: each found kidney's structures that no finding concerns (with
    ``limits.per_kidney``, findings of its own side or of the study; else every finding), of those ``allowed`` (the
    parenchyma alone where selection said so, ``not_allowed_why``); with ``qc.on_fail: flag`` a study that would
    deliver nothing delivers everything it measured, for review."""
    delivered: list[tuple[Structure, Side]] = []
    absent: list[Absent] = []
    for side in SIDES:
        if side not in measurements.kidneys:
            absent.append(Absent(side, STRUCTURES, Absence.NOT_FOUND))
            continue
        concerning = _concerning(report, side, limits.per_kidney)
        blocked: dict[Structure, list[Finding]] = {s: [f for f in concerning if s in f.rule.structures or not limits.per_structure] for s in STRUCTURES}
        kept = [s for s in STRUCTURES if s in allowed and not blocked[s]]
        delivered += [(s, side) for s in kept]
        missing = [s for s in STRUCTURES if s not in kept]
        not_measured = tuple(s for s in missing if s not in allowed)
        if not_measured:
            absent.append(Absent(side, not_measured, Absence.NOT_MEASURED, not_allowed_why))
        withheld = tuple(s for s in missing if s in allowed)
        if withheld:
            absent.append(_withheld(side, withheld, blocked[withheld[0]], measurements, limits.kidney_ml[0]))
    review = False
    if not delivered and limits.on_fail is OnFail.FLAG:
        delivered = [(s, side) for side in SIDES if side in measurements.kidneys for s in allowed]
        absent = [a for a in absent if a.reason in (Absence.NOT_FOUND, Absence.NOT_MEASURED)]
        review = bool(delivered)
    order = [(s, side) for s in STRUCTURES for side in SIDES]
    plan = tuple(sorted(delivered, key=order.index))
    return ReportPlan(plan, tuple(absent), review, _qc_verdict(report, plan, review, measurements))


#: Findings that the outline may hold more than the kidney: its volume in view is then no lower bound.
_TAKES_IN = frozenset({Rule.OUTLINE, Rule.DENSER, Rule.THICK_CORTEX, Rule.EXTRA})


def _concerning(report: QCReport, side: Side, per_kidney: bool) -> list[Finding]:
    """The findings that can withhold ``side``'s kidney. A missing other kidney is an absence, not a finding on
    this one, with ``per_kidney``; without it every finding withholds everything, as before the plan."""
    return report.concerning(side) if per_kidney else list(report.findings)


def _withheld(side: Side, structures: tuple[Structure, ...], findings: list[Finding], measurements: Measurements, smallest_ml: float) -> Absent:
    """Why a found kidney's structures are withheld: the field of view where the image's edge cuts the kidney (or a
    kidney on the edge is too small) and no study-level finding concerns it (with the lower bound and any other
    findings of the kidney); its place alone (not beside the spine: a pelvic transplant, a horseshoe kidney across
    the midline), named atypical rather than measured as a left or right kidney; the phase; or the findings named."""
    rules = {f.rule for f in findings}
    kidney = measurements.kidneys[side]
    too_small = Rule.VOLUME in rules and kidney.parenchyma_ml < smallest_ml
    cut = Rule.FIELD_OF_VIEW in rules or (kidney.cut_share > 0 and too_small)  # too small where the edge cuts it
    cut = cut and not rules & _TAKES_IN  # a volume that may hold a neighbour is no lower bound
    if cut and all(f.scope == side for f in findings):
        others = [f"{f.rule.value}: {f.message}" for f in findings if f.rule is not Rule.FIELD_OF_VIEW]
        bound = f"parenchyma in view {kidney.parenchyma_ml:.0f} ml, a lower bound of the kidney's volume"
        return Absent(side, structures, Absence.CUT_OFF, "; ".join([bound, *others]))
    if rules == {Rule.POSITION}:  # a pelvic (transplant), ptotic or fused kidney, or two at heights apart
        return Absent(side, structures, Absence.ATYPICAL, "; ".join(f.message for f in findings))
    if Rule.PHASE in rules and structures == (Structure.CORTEX, Structure.MEDULLA):  # whatever else concerns them
        return Absent(side, structures, Absence.NOT_MEASURED, "; ".join(f.message for f in findings if f.rule is Rule.PHASE))
    return Absent(side, structures, Absence.WITHHELD, "; ".join(f"{f.rule.value}: {f.message}" for f in findings))


def _qc_verdict(report: QCReport, delivered: tuple[tuple[Structure, Side], ...], review: bool, measurements: Measurements) -> str:
    """The QC verdict on what is delivered."""
    if report.passed:
        return report.verdict
    if review or not delivered:
        return report.verdict
    sides = {side for _, side in delivered}
    structures = tuple(s for s in STRUCTURES if any(s == d for d, _ in delivered))
    if sides == set(measurements.kidneys) and len(delivered) == len(sides) * len(structures):
        return f"QC passed for renal {' and '.join(structures)}"
    parts = [f"{side} renal {_listed([s for s, d in delivered if d == side])}" for side in SIDES if side in sides]
    return f"QC passed for the {'; the '.join(parts)}"


def _listed(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
