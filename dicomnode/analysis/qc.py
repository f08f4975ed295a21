"""QC stage: judge whether measured kidneys are plausible before anything is sent, with a reason per finding.

Each rule looks at one thing a reader would check by eye: size, shape, place beside the spine, the field of view,
the cortex, the contrast phase, the outline against its neighbours, and the two sides. Each rule concerns some
structures: the cortex's and the phase's only cortex and medulla, the others the parenchyma and so everything. A structure passes when no finding concerns
it; with ``qc.per_structure`` the parenchyma is sent when it passes even where cortex and medulla do not. What
happens to a structure that fails is ``qc.on_fail`` (withhold, or send flagged for review).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np

from dicomnode.analysis.measure import CORTEX_HALF_THICKNESS_MM, DENSER_HU, KidneyMeasurement, Measurements
from dicomnode.config import QCConfig
from dicomnode.imaging.aorta import ImagePhase
from dicomnode.renal import SIDES, STRUCTURES, Side, Structure


class Rule(str, enum.Enum):
    """What a QC finding is about."""

    KIDNEY_MISSING = "kidney missing"
    VOLUME = "implausible volume"
    SHAPE = "not one compact kidney"
    FIELD_OF_VIEW = "cut off by the field of view"
    POSITION = "not beside the spine"
    NO_SPINE = "its place cannot be checked"
    ATTENUATION = "implausible attenuation"
    CORTEX_SHARE = "implausible cortex share"
    CORTICOMEDULLARY = "no corticomedullary differentiation"
    OUTLINE = "the outline runs into a neighbouring organ"
    DENSER = "the outline takes in denser tissue"
    LEFT_OUT = "part of the kidney is left out"
    UNCERTAIN = "the model is unsure of the volume"
    UNCERTAIN_CORTEX = "the model is unsure of cortex and medulla"
    THICK_CORTEX = "cortex thicker than a cortex can be"
    PHASE = "not arterial phase"
    SIDES = "sides not established"
    MODEL_SIDE = "model and anatomy disagree on the side"
    EXTRA = "another kidney-sized component"

    @property
    def structures(self) -> tuple[str, ...]:
        """The structures a finding of this rule withholds."""
        return CORTEX_AND_MEDULLA if self in _CORTEX_RULES else STRUCTURES


CORTEX_AND_MEDULLA = (Structure.CORTEX, Structure.MEDULLA)
_CORTEX_RULES = frozenset({Rule.CORTEX_SHARE, Rule.CORTICOMEDULLARY, Rule.PHASE, Rule.UNCERTAIN_CORTEX})


#: What a finding or note is about: one side's kidney, or the study as a whole.
STUDY: Final = "study"
Scope = Side | Literal["study"]


@dataclass(frozen=True)
class Finding:
    """One failed check: the rule, where (a side or the whole study) and why, in words for the reader."""

    rule: Rule
    scope: Scope
    message: str

    def __str__(self) -> str:
        return f"QC {_where(self.scope)}: {self.rule.value}: {self.message}"


@dataclass(frozen=True)
class Note:
    """What the reader should know of a result that passed, e.g. that a volume is a lower bound."""

    scope: Scope
    message: str

    def __str__(self) -> str:
        return f"QC note, {_where(self.scope)}: {self.message}"


def _where(scope: Scope) -> str:
    return f"{scope} kidney" if scope in SIDES else "study"


@dataclass(frozen=True)
class QCReport:
    """All findings of one study, and notes for the reader; it passes when there are no findings."""

    findings: list[Finding]
    notes: list[Note] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.findings

    def passed_for(self, structures: tuple[str, ...]) -> bool:
        """Whether no finding concerns any of ``structures``."""
        return not any(set(f.rule.structures) & set(structures) for f in self.findings)

    def deliverable(self, per_structure: bool) -> tuple[str, ...]:
        """The structures that passed: all three, the parenchyma alone (``per_structure`` only), or none."""
        if self.passed:
            return STRUCTURES
        return (Structure.PARENCHYMA,) if per_structure and self.passed_for((Structure.PARENCHYMA,)) else ()

    @property
    def verdict(self) -> str:
        return "QC passed" if self.passed else f"QC failed: {len(self.findings)} finding(s), review needed"

    def for_scope(self, scope: Scope) -> list[Finding]:
        return [f for f in self.findings if f.scope == scope]

    def concerning(self, side: Side) -> list[Finding]:
        """The findings that can withhold ``side``'s kidney on its own: its own and the study's."""
        return [f for f in self.findings if f.scope in (side, STUDY)]

    def lines(self) -> list[str]:
        return [str(f) for f in self.findings]


def check(measurements: Measurements, phase: ImagePhase, limits: QCConfig) -> QCReport:
    """Apply every rule to the study's measurements; ``phase`` is what the image check said of the series."""
    findings: list[Finding] = []
    one_outline = _one_outline(measurements)
    for side in SIDES:
        kidney = measurements.kidneys.get(side)
        if kidney is None:
            findings.append(Finding(Rule.KIDNEY_MISSING, side, f"no {side} kidney found"))
            continue
        findings += _kidney_findings(kidney, phase, limits, one_outline)
    findings += _study_findings(measurements, phase, limits)
    notes = [
        Note(k.side, f"the kidney touches the image's edge (its face there is {k.cut_share:.0%} of its largest cross-section): its volume is a lower bound")
        for k in measurements.kidneys.values()
        if 0 < k.cut_share <= limits.max_cut_share
    ]
    return QCReport(findings, notes)


def _one_outline(measurements: Measurements) -> bool:
    """Whether one method drew the parenchyma and split it into cortex and medulla (where another model drew the
    parenchyma, medulla on its outline says the two disagree, not that the outline runs into a neighbour)."""
    made = {measurements.algorithms.get(s) for s in (Structure.PARENCHYMA, Structure.CORTEX)}
    return len(made) == 1


def _kidney_findings(kidney: KidneyMeasurement, phase: ImagePhase, limits: QCConfig, one_outline: bool = True) -> list[Finding]:
    side, found = kidney.side, []
    low, high = limits.kidney_ml
    if not low <= kidney.parenchyma_ml <= high:
        found.append(Finding(Rule.VOLUME, side, f"parenchyma {kidney.parenchyma_ml:.0f} ml, outside {low:.0f}-{high:.0f} ml"))
    if kidney.extent_mm > limits.max_extent_mm:
        found.append(Finding(Rule.SHAPE, side, f"{kidney.extent_mm:.0f} mm long, longer than {limits.max_extent_mm:.0f} mm"))
    if kidney.cut_share > limits.max_cut_share:
        why = f"the image's edge cuts the kidney (its face there is {kidney.cut_share:.0%} of its largest cross-section, more than {limits.max_cut_share:.0%})"
        found.append(Finding(Rule.FIELD_OF_VIEW, side, why))
    found += _position_findings(kidney, limits)
    if kidney.model_side is not None and kidney.model_side != side:
        why = f"the model labelled the kidney on the patient's {side} as its {kidney.model_side} kidney (orientation or model fault)"
        found.append(Finding(Rule.MODEL_SIDE, side, why))
    mean_hu = _mean_hu(kidney)
    low, high = limits.kidney_hu
    if not low <= mean_hu <= high:
        found.append(Finding(Rule.ATTENUATION, side, f"mean {mean_hu:.0f} HU, outside {low:.0f}-{high:.0f} HU for renal parenchyma"))
    share = kidney.cortex_ml / kidney.parenchyma_ml if kidney.parenchyma_ml else 0.0
    low, high = limits.cortex_share
    if not low <= share <= high:
        found.append(Finding(Rule.CORTEX_SHARE, side, f"cortex is {share:.0%} of parenchyma, outside {low:.0%}-{high:.0%}"))
    if phase in (ImagePhase.ARTERIAL, ImagePhase.UNKNOWN):
        difference = kidney.cortex_hu - kidney.medulla_hu
        if not difference >= limits.min_corticomedullary_hu:
            found.append(
                Finding(
                    Rule.CORTICOMEDULLARY,
                    side,
                    f"cortex {kidney.cortex_hu:.0f} HU, medulla {kidney.medulla_hu:.0f} HU: the difference is below "
                    f"{limits.min_corticomedullary_hu:.0f} HU, so cortex and medulla cannot be told apart",
                )
            )
    if one_outline and phase is ImagePhase.ARTERIAL and kidney.outline_medulla_share > limits.max_outline_medulla_share:
        why = (
            f"{kidney.outline_medulla_share:.0%} of the kidney's outer surface is medulla (at most "
            f"{limits.max_outline_medulla_share:.0%} expected: in the arterial phase cortex covers the medulla), so the "
            "outline likely takes in a neighbouring organ of the medulla's density, such as the spleen or liver"
        )
        found.append(Finding(Rule.OUTLINE, side, why))
    if phase is ImagePhase.UNENHANCED and kidney.denser_share > limits.max_denser_share:
        why = (
            f"{kidney.denser_share:.1%} of the kidney is more than {DENSER_HU:.0f} HU denser than its median (at most "
            f"{limits.max_denser_share:.0%} expected: without contrast the parenchyma is uniform), so the outline likely "
            "takes in a denser neighbour such as the liver or spleen"
        )
        found.append(Finding(Rule.DENSER, side, why))
    if kidney.left_out_share > limits.max_left_out_share:
        why = (
            f"tissue of renal density inside the kidney's outline but outside its mask amounts to {kidney.left_out_share:.0%} of the "
            f"kidney (at most {limits.max_left_out_share:.0%} expected: the hilar vessels), so part of the kidney, often the medulla, "
            "is likely left out and the volume too low"
        )
        found.append(Finding(Rule.LEFT_OUT, side, why))
    for rule, structure, limit in (
        (Rule.UNCERTAIN, Structure.PARENCHYMA, limits.max_volume_range_share),
        (Rule.UNCERTAIN_CORTEX, Structure.CORTEX, limits.max_cortex_range_share),  # the medulla's range comes from the same probabilities
    ):
        spread = kidney.spread(structure)
        if spread is not None and spread > limit:
            low, high = kidney.ranges[structure]
            why = f"{structure} {low:.0f}-{high:.0f} ml between the model's probability thresholds, {spread:.0%} of its {kidney.volume(structure):.0f} ml"
            found.append(Finding(rule, side, f"{why} (at most {limit:.0%} expected)"))
    if phase in (ImagePhase.ARTERIAL, ImagePhase.UNKNOWN) and kidney.thick_cortex_share > limits.max_thick_cortex_share:
        why = (
            f"{kidney.thick_cortex_share:.0%} of what was labelled cortex lies more than {CORTEX_HALF_THICKNESS_MM:.0f} mm deep inside it "
            f"(at most {limits.max_thick_cortex_share:.0%} expected: a cortex is some 4-10 mm thick), so the outline likely takes in a "
            "neighbour of cortex density (spleen, liver, bowel wall or a vessel)"
        )
        found.append(Finding(Rule.THICK_CORTEX, side, why))
    return found


def _position_findings(kidney: KidneyMeasurement, limits: QCConfig) -> list[Finding]:
    side = kidney.side
    if kidney.spine_offset_mm is None or kidney.spine_slices < limits.min_spine_share:
        share = kidney.spine_slices
        return [Finding(Rule.NO_SPINE, side, f"the vertebral column was found on {share:.0%} of the kidney's slices")]
    dx, dy = kidney.spine_offset_mm
    lateral = dx if side == Side.LEFT else -dx  # LPS: the left kidney lies at larger x than the spine
    found = []
    low, high = limits.lateral_mm
    if not low <= lateral <= high:
        found.append(Finding(Rule.POSITION, side, f"centre {lateral:.0f} mm to the {side} of the spine, expected {low:.0f}-{high:.0f} mm"))
    low, high = limits.anteroposterior_mm
    if not low <= dy <= high:
        where = "behind" if dy > 0 else "in front of"
        expected = f"expected {-high:.0f} mm behind to {-low:.0f} mm in front"
        found.append(Finding(Rule.POSITION, side, f"centre {abs(dy):.0f} mm {where} the spine's centre, {expected}"))
    return found


def _study_findings(measurements: Measurements, phase: ImagePhase, limits: QCConfig) -> list[Finding]:
    found = []
    if phase in (ImagePhase.UNENHANCED, ImagePhase.ENHANCED):
        found.append(Finding(Rule.PHASE, STUDY, f"the image check found {phase.value}: renal cortex and medulla are measured in the arterial phase only"))
    elif phase is ImagePhase.UNKNOWN and limits.require_arterial_image:
        found.append(Finding(Rule.PHASE, STUDY, "the image check could not confirm the arterial phase: renal cortex and medulla are measured in it only"))
    if measurements.kidneys and measurements.midline_source not in ("spine", "body outline"):
        found.append(Finding(Rule.SIDES, STUDY, f"no spine or body outline found; sides taken from {measurements.midline_source}"))
    kept = sum(k.parenchyma_ml for k in measurements.kidneys.values())
    stray = measurements.predicted_ml - kept
    if stray > limits.max_stray_ml:
        found.append(Finding(Rule.SHAPE, STUDY, f"{stray:.0f} ml predicted as kidney outside the kidneys kept (at most {limits.max_stray_ml:.0f} ml expected)"))
    for note in measurements.notes:
        found.append(Finding(Rule.EXTRA, STUDY, note))
    if len(measurements.kidneys) == 2:
        heights = abs(measurements.kidneys[Side.LEFT].centre_mm[2] - measurements.kidneys[Side.RIGHT].centre_mm[2])
        if heights > limits.max_height_difference_mm:
            found.append(
                Finding(
                    Rule.POSITION,
                    STUDY,
                    f"the kidneys' centres are {heights:.0f} mm apart in height, more than {limits.max_height_difference_mm:.0f} mm",
                )
            )
    return found


def _mean_hu(kidney: KidneyMeasurement) -> float:
    total = kidney.cortex_ml + kidney.medulla_ml
    if not total:
        return float("nan")
    parts = [(v, ml) for v, ml in ((kidney.cortex_hu, kidney.cortex_ml), (kidney.medulla_hu, kidney.medulla_ml)) if ml]
    return float(np.sum([v * ml for v, ml in parts]) / total)
