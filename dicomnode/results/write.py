"""Write stage: the SEG, the SR and, where a destination wants them, the Secondary Capture pages of one result."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

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
from dicomnode.options import OutputFormat
from dicomnode.renal import Side, Structure
from dicomnode.results.equipment import MANUFACTURER
from dicomnode.results.secondary_capture import write_sc
from dicomnode.results.seg import SEGMENT_ORDER, segment_numbers, write_seg
from dicomnode.results.sr import write_sr
from dicomnode.segment.model import Model


@dataclass(frozen=True)
class Results:
    """The result objects of one job by output format, in the order they were written: SEG and TID 1500 SR (and the
    Secondary Capture pages where a destination wants them), or a text SR alone when there is no result."""

    objects: dict[OutputFormat, list[pydicom.Dataset]]

    @property
    def seg(self) -> pydicom.Dataset | None:
        return next(iter(self.objects.get(OutputFormat.SEG, [])), None)

    @property
    def sr(self) -> pydicom.Dataset:
        return self.objects[OutputFormat.SR][0]

    @property
    def sc(self) -> list[pydicom.Dataset]:
        return self.objects.get(OutputFormat.SC, [])


@dataclass(frozen=True)
class Report:
    """What every writer is given: the measured series (its HU freed where no writer needs it), the measurements, QC
    and the report plan, the model, the job's UIDs, the follow-up, each delivered structure's Tracking UID and the
    series' slices the kidneys lie on."""

    series: LoadedSeries
    measurements: Measurements
    qc: QCReport
    plan: ReportPlan
    model: Model
    uids: ResultUids
    followup: FollowUp | None
    tracking: dict[tuple[Structure, Side], str]
    slices: np.ndarray


#: A writer: the objects of one output format for a report, given what the writers before it made.
Writer = Callable[[Report, Mapping[OutputFormat, list[pydicom.Dataset]]], list[pydicom.Dataset]]


def _seg(report: Report, made: Mapping[OutputFormat, list[pydicom.Dataset]]) -> list[pydicom.Dataset]:
    r = report
    return [write_seg(r.series, r.measurements, r.model, r.tracking, r.slices, review=r.plan.review, uids=r.uids)]


def _sr(report: Report, made: Mapping[OutputFormat, list[pydicom.Dataset]]) -> list[pydicom.Dataset]:
    r, seg = report, made[OutputFormat.SEG][0]
    return [write_sr(r.series, r.measurements, r.qc, r.plan, seg, segment_numbers(seg), r.tracking, r.model, r.slices, r.uids, r.followup)]


def _sc(report: Report, made: Mapping[OutputFormat, list[pydicom.Dataset]]) -> list[pydicom.Dataset]:
    r = report
    return write_sc(r.series, r.measurements, r.qc, r.plan, r.model, r.uids, r.followup)


#: Each output format's writer, in the order they run (the SR refers to the SEG): a new format is a writer here, its
#: value in ``options.OutputFormat`` and, where it needs the image's pixels, a place in :data:`NEEDS_PIXELS`.
WRITERS: dict[OutputFormat, Writer] = {OutputFormat.SEG: _seg, OutputFormat.SR: _sr, OutputFormat.SC: _sc}
#: The formats always written: the SEG and the SR are the result; the others only where a destination wants them.
ALWAYS = (OutputFormat.SEG, OutputFormat.SR)
#: The formats whose writers draw the image (the others need its headers and the kidneys' masks only).
NEEDS_PIXELS = frozenset({OutputFormat.SC})


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
    formats: Collection[OutputFormat] = ALWAYS,
    uids: ResultUids = RANDOM_UIDS,
    followup: FollowUp | None = None,
) -> Results:
    """The objects of ``formats`` (the SEG and SR always) for what ``plan`` delivers of a measured study; where the
    plan sends for review, all say "QC: review" and the SR lists every finding. ``followup`` adds the change since the
    patient's prior result to the SR and the summary page. ``uids`` derives every UID from the job, so a re-run makes
    the same instances."""
    report = Report(series, measurements, qc, plan, model, uids, followup, tracking_uids(plan, uids), measured_slices(series, measurements, plan.sides))
    made: dict[OutputFormat, list[pydicom.Dataset]] = {}
    for output, writer in WRITERS.items():
        if output in ALWAYS or output in formats:
            made[output] = writer(report, made)
    return Results(made)


def warm_writers() -> None:
    """Have highdicom read the standard's tables it looks attributes up in, which it does on its first object,
    so that a worker's first study does not wait for them."""
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
