"""The report plan: per side and structure, delivered or absent with its reason, decided once from QC's findings."""

from __future__ import annotations

import numpy as np
import pytest

from dicomnode.analysis.measure import KidneyMeasurement, Measurements
from dicomnode.analysis.plan import Absence, decide
from dicomnode.analysis.qc import STUDY, Finding, QCReport, Rule
from dicomnode.config import QCConfig
from dicomnode.options import OnFail
from dicomnode.renal import SIDES, STRUCTURES, Side, Structure

ALL = tuple((s, side) for s in STRUCTURES for side in SIDES)


def _kidney(side: Side, ml: float = 150.0, cut_share: float = 0.0) -> KidneyMeasurement:
    empty = np.zeros((1, 1, 1), bool)
    box = (slice(0, 1),) * 3
    x = 70.0 if side is Side.LEFT else -70.0
    centre, edge = (x, 0.0, 0.0), cut_share > 0
    return KidneyMeasurement(side, ml, 0.7 * ml, 0.3 * ml, box, (1, 1, 1), empty, empty, 180.0, 80.0, centre, 110.0, edge, cut_share, (x, 20.0), 1.0)


def _measured(*sides: Side, cut: Side | None = None) -> Measurements:
    return Measurements({side: _kidney(side, 32.0 if side is cut else 150.0, 0.5 if side is cut else 0.0) for side in sides}, midline_source="spine")


def test_a_study_that_passes_delivers_every_structure_of_both_kidneys() -> None:
    plan = decide(_measured(*SIDES), QCReport([]), STRUCTURES, QCConfig())
    assert plan.delivered == ALL and plan.absent == () and not plan.review and plan.both_kidneys
    assert plan.qc_verdict == "QC passed"


def test_a_solitary_kidney_is_delivered_and_the_other_side_is_not_found() -> None:
    report = QCReport([Finding(Rule.KIDNEY_MISSING, Side.LEFT, "no left kidney found")])
    plan = decide(_measured(Side.RIGHT), report, STRUCTURES, QCConfig())
    assert plan.delivered == tuple((s, Side.RIGHT) for s in STRUCTURES)
    assert [(a.side, a.reason) for a in plan.absent] == [(Side.LEFT, Absence.NOT_FOUND)]
    assert str(plan.absent[0]) == "Left kidney not reported: no kidney was found on this side"
    assert not plan.both_kidneys and not plan.review


def test_a_kidney_out_of_place_is_named_atypical_not_measured_as_a_side() -> None:
    """A kidney not beside the spine (low in the pelvis, or across the midline) is reported as atypical."""
    report = QCReport([Finding(Rule.POSITION, Side.LEFT, "centre 160 mm to the left of the spine, expected 30-110 mm")])
    plan = decide(_measured(*SIDES), report, STRUCTURES, QCConfig())
    (absent,) = plan.absent
    assert absent.reason is Absence.ATYPICAL and str(absent).startswith("Left kidney not reported: not measured: atypical position or fusion")


def test_a_kidney_level_finding_withholds_that_kidney_only_and_is_named() -> None:
    report = QCReport([Finding(Rule.ATTENUATION, Side.LEFT, "mean 400 HU, outside 0-350 HU for renal parenchyma")])
    plan = decide(_measured(*SIDES), report, STRUCTURES, QCConfig())
    assert plan.sides == (Side.RIGHT,)
    (absent,) = plan.absent
    assert absent.reason is Absence.WITHHELD and absent.structures == STRUCTURES
    assert "implausible attenuation: mean 400 HU" in str(absent)
    assert plan.qc_verdict == "QC passed for the right renal parenchyma, cortex and medulla"


def test_all_or_nothing_is_one_setting_away() -> None:
    report = QCReport([Finding(Rule.ATTENUATION, Side.LEFT, "mean 400 HU, outside 0-350 HU for renal parenchyma")])
    plan = decide(_measured(*SIDES), report, STRUCTURES, QCConfig(per_kidney=False))
    assert plan.delivered == () and {a.side for a in plan.absent} == set(SIDES)
    missing = QCReport([Finding(Rule.KIDNEY_MISSING, Side.LEFT, "no left kidney found")])
    assert decide(_measured(Side.RIGHT), missing, STRUCTURES, QCConfig(per_kidney=False)).delivered == ()


def test_a_kidney_cut_by_the_field_of_view_is_a_lower_bound_not_a_volume() -> None:
    report = QCReport([Finding(Rule.FIELD_OF_VIEW, Side.LEFT, "the image's edge cuts the kidney")])
    plan = decide(_measured(*SIDES, cut=Side.LEFT), report, STRUCTURES, QCConfig())
    assert plan.sides == (Side.RIGHT,)
    (absent,) = plan.absent
    assert absent.reason is Absence.CUT_OFF and "parenchyma in view 32 ml, a lower bound" in absent.detail
    # a kidney on the edge that fails another kidney-level rule is reported as cut off too, with that finding
    small = QCReport([Finding(Rule.VOLUME, Side.LEFT, "parenchyma 32 ml, outside 40-450 ml")])
    (absent,) = decide(_measured(*SIDES, cut=Side.LEFT), small, STRUCTURES, QCConfig()).absent
    assert absent.reason is Absence.CUT_OFF and "implausible volume: parenchyma 32 ml" in absent.detail


def test_a_study_level_finding_withholds_both_sides() -> None:
    report = QCReport([Finding(Rule.SHAPE, STUDY, "51 ml predicted as kidney outside the kidneys kept")])
    plan = decide(_measured(*SIDES), report, STRUCTURES, QCConfig())
    assert plan.delivered == () and all(a.reason is Absence.WITHHELD for a in plan.absent)


def test_outside_the_arterial_phase_cortex_and_medulla_are_not_measured() -> None:
    report = QCReport([Finding(Rule.PHASE, STUDY, "the image check found no contrast enhancement")])
    plan = decide(_measured(*SIDES), report, STRUCTURES, QCConfig())
    assert plan.delivered == ((Structure.PARENCHYMA, Side.LEFT), (Structure.PARENCHYMA, Side.RIGHT))
    assert {(a.side, a.structures, a.reason) for a in plan.absent} == {(side, (Structure.CORTEX, Structure.MEDULLA), Absence.NOT_MEASURED) for side in SIDES}
    assert plan.qc_verdict == "QC passed for renal parenchyma"


@pytest.mark.parametrize("per_kidney", [True, False])
def test_flag_sends_everything_measured_for_review_where_nothing_would_be_sent(per_kidney: bool) -> None:
    report = QCReport([Finding(Rule.SHAPE, STUDY, "51 ml predicted as kidney outside the kidneys kept")])
    plan = decide(_measured(*SIDES), report, STRUCTURES, QCConfig(on_fail=OnFail.FLAG, per_kidney=per_kidney))
    assert plan.delivered == ALL and plan.review and plan.absent == ()
    assert plan.qc_verdict == report.verdict


def test_outside_the_arterial_phase_other_cortex_findings_do_not_change_the_reason() -> None:
    report = QCReport(
        [
            Finding(Rule.PHASE, STUDY, "the image check found no contrast enhancement"),
            Finding(Rule.UNCERTAIN_CORTEX, Side.LEFT, "cortex 40-60 ml between the model's probability thresholds"),
        ]
    )
    plan = decide(_measured(*SIDES), report, STRUCTURES, QCConfig())
    assert all(a.reason is Absence.NOT_MEASURED and a.detail == "the image check found no contrast enhancement" for a in plan.absent)


def test_a_spine_not_found_is_no_atypical_kidney() -> None:
    report = QCReport([Finding(Rule.NO_SPINE, Side.LEFT, "the vertebral column was found on 10% of the kidney's slices")])
    (absent,) = decide(_measured(*SIDES), report, STRUCTURES, QCConfig()).absent
    assert absent.reason is Absence.WITHHELD and "its place cannot be checked" in absent.detail


def test_a_kidney_on_the_edge_too_large_or_holding_a_neighbour_is_no_lower_bound() -> None:
    large = QCReport([Finding(Rule.VOLUME, Side.LEFT, "parenchyma 500 ml, outside 40-450 ml")])
    measured = Measurements({side: _kidney(side, 500.0 if side is Side.LEFT else 150.0, 0.2 if side is Side.LEFT else 0.0) for side in SIDES})
    assert decide(measured, large, STRUCTURES, QCConfig()).absent[0].reason is Absence.WITHHELD
    taken = QCReport([Finding(Rule.FIELD_OF_VIEW, Side.LEFT, "cut"), Finding(Rule.THICK_CORTEX, Side.LEFT, "spleen")])
    assert decide(_measured(*SIDES, cut=Side.LEFT), taken, STRUCTURES, QCConfig()).absent[0].reason is Absence.WITHHELD
