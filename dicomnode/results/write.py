"""Write stage: the SEG, the SR and, where a destination wants them, the Secondary Capture pages of one result."""

from __future__ import annotations

from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
import pydicom
from pydicom.uid import generate_uid
from pynetdicom.sop_class import SegmentationStorage

from dicomnode.analysis.followup import FollowUp
from dicomnode.analysis.measure import Measurements
from dicomnode.analysis.plan import ReportPlan
from dicomnode.analysis.qc import QCReport
from dicomnode.base.uids import RANDOM_UIDS, ResultUids
from dicomnode.imaging.load import LoadedSeries
from dicomnode.renal import Side, Structure
from dicomnode.results.capture import write_sc
from dicomnode.results.equipment import MANUFACTURER
from dicomnode.results.seg import SEGMENT_ORDER, write_seg
from dicomnode.results.sr import write_sr
from dicomnode.segment.model import Model


@dataclass(frozen=True)
class Results:
    """The result objects of one job: SEG and TID 1500 SR, or a text SR alone when there is no result."""

    seg: pydicom.Dataset | None
    sr: pydicom.Dataset
    sc: list[pydicom.Dataset] = field(default_factory=list)  # Secondary Capture pages, where a destination wants them


def tracking_uids(plan: ReportPlan, uids: ResultUids) -> dict[tuple[Structure, Side], str]:
    """One Tracking UID per structure and side the plan delivers, shared by its SEG segment and its SR group."""
    return {(structure, side): uids.uid(f"tracking/{structure}/{side}") for structure, side in SEGMENT_ORDER if plan.delivers(structure, side)}


def measured_slices(series: LoadedSeries, measurements: Measurements, sides: tuple[Side, ...]) -> np.ndarray:
    """Which of the series' slices a reported kidney (of ``sides``) lies on (all, where none is). The SEG derives from
    these slices only and the SR's Image Library (TID 1600) lists them: a 1 mm series has some 500 slices and the
    kidneys about a quarter of them, and carrying all of them made SEG and SR several times slower to write."""
    occupied = np.zeros(len(series.datasets), bool)
    for side, kidney in measurements.kidneys.items():
        if side in sides:
            occupied |= kidney.slice_areas() > 0
    return occupied if occupied.any() else np.ones(len(series.datasets), bool)


def write_results(
    series: LoadedSeries,
    measurements: Measurements,
    qc: QCReport,
    plan: ReportPlan,
    model: Model,
    pictures: bool = False,
    uids: ResultUids = RANDOM_UIDS,
    followup: FollowUp | None = None,
) -> Results:
    """SEG and SR of what ``plan`` delivers of a measured study, and with ``pictures`` the Secondary Capture pages;
    where the plan sends for review, all say "QC: review" and the SR lists every finding. ``followup`` adds the
    change since the patient's prior result to the SR and the summary page. ``uids`` derives every UID from the job,
    so a re-run makes the same instances."""
    tracking, slices = tracking_uids(plan, uids), measured_slices(series, measurements, plan.sides)
    seg, numbers = write_seg(series, measurements, model, tracking, slices, review=plan.review, uids=uids)
    sc = write_sc(series, measurements, qc, plan, model, uids, followup) if pictures else []
    return Results(seg, write_sr(series, measurements, qc, plan, seg, numbers, tracking, model, slices, uids, followup), sc)


def warm_writers() -> None:
    """Have highdicom read the standard's tables it looks attributes up in, which it does on its first object (0.3 s
    alone, 0.8 s beside a running model), so that a worker's first study does not wait for them."""
    hd.SOPClass(
        study_instance_uid=generate_uid(),
        series_instance_uid=generate_uid(),
        series_number=1,
        sop_instance_uid=generate_uid(),
        sop_class_uid=SegmentationStorage,
        instance_number=1,
        modality="SEG",
        manufacturer=MANUFACTURER,
    )
