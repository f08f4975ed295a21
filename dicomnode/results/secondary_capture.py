"""Secondary Capture for PACS that cannot show a SEG: key axial slices with cortex and medulla outlines, and a page
with the volumes, the QC verdict and the model's intended use; burned-in annotation, flagged as such."""

from __future__ import annotations

from collections.abc import Callable

import highdicom as hd
import numpy as np
import pydicom
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import DateFormatter, date2num
from matplotlib.figure import Figure

from dicomnode.analysis.followup import FollowUp
from dicomnode.analysis.measure import KidneyMeasurement, Measurements
from dicomnode.analysis.plan import ReportPlan
from dicomnode.analysis.qc import CORTEX_AND_MEDULLA, QCReport
from dicomnode.base.uids import RANDOM_UIDS, ResultUids
from dicomnode.imaging.axes import canonical_flips, plane_in_patient_axes
from dicomnode.imaging.load import LoadedSeries
from dicomnode.renal import SIDES, STRUCTURES, Side, Structure
from dicomnode.results.equipment import MANUFACTURER, QC_REVIEW_SUFFIX
from dicomnode.segment.band import BAND_THRESHOLDS
from dicomnode.segment.model import Model

SC_SERIES_NUMBER = 9703
SC_DESCRIPTION = "Renal volumes key images (research)"
#: Output size of every page, pixels.
SIZE = 768
#: Abdomen window (level, width) in HU.
WINDOW = (40.0, 400.0)
OUTLINES = {Structure.CORTEX: "#ff3030", Structure.MEDULLA: "#ffd400", Structure.PARENCHYMA: "#ff9a30"}
#: Shown on every page unless the model's card says ``for_diagnosis: true``.
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSIS - research result"


def for_diagnosis(model: Model) -> bool:
    """Whether the model's card allows diagnostic use (it must say so; the default is no)."""
    return model.card.get("for_diagnosis") is True


def key_slice(series: LoadedSeries, measurements: Measurements, side: Side) -> int:
    """Index (in the canonical, feet-to-head order) of the axial slice where ``side``'s parenchyma is largest."""
    areas = measurements.kidneys[side].slice_areas()
    return int(np.argmax(areas[::-1] if 0 in canonical_flips(series.direction) else areas))


def _canonical_plane(series: LoadedSeries, kidney: KidneyMeasurement, structure: str, k: int) -> np.ndarray:
    """A structure's mask on slice ``k`` of the canonical (patient-axes) view, from that slice alone."""
    plane = kidney.slice_mask(structure, series.hu.shape[0] - 1 - k if 0 in canonical_flips(series.direction) else k)
    return plane_in_patient_axes(plane, series.direction[:, 0], series.direction[:, 1])


def _page(draw: Callable[[Figure], None]) -> np.ndarray:
    """Render a figure drawn by ``draw(figure)`` into a SIZE x SIZE RGB array (Agg, no display)."""
    figure = Figure(figsize=(SIZE / 100, SIZE / 100), dpi=100, facecolor="black")
    canvas = FigureCanvasAgg(figure)
    draw(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def slice_page(series: LoadedSeries, measurements: Measurements, side: Side, caption: str, plan: ReportPlan) -> np.ndarray:
    """The key slice of one kidney, the outlines of what the plan delivers drawn (cortex and medulla where they are
    sent, else the parenchyma), displayed as radiologists read axial CT (patient's right on the image's left,
    anterior up)."""
    canonical = series.in_patient_axes
    k = key_slice(series, measurements, side)
    level, width = WINDOW
    image = np.clip((canonical(series.hu)[k] - (level - width / 2)) / width, 0, 1)
    aspect = float(series.spacing[1] / series.spacing[0])

    def draw(figure: Figure) -> None:
        axes = figure.add_axes((0, 0.06, 1, 0.88))
        axes.imshow(image, cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="bilinear")
        for kidney in measurements.kidneys.values():
            if kidney.side not in plan.sides:
                continue
            outlined = CORTEX_AND_MEDULLA if plan.delivers(Structure.CORTEX, kidney.side) else (Structure.PARENCHYMA,)
            for structure in outlined:
                colour = OUTLINES[structure]
                mask = _canonical_plane(series, kidney, structure, k)
                if mask.any():
                    axes.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1.2)
        axes.set_axis_off()
        axes.text(0.01, 0.5, "R", color="white", fontsize=16, transform=axes.transAxes, va="center")
        axes.text(0.97, 0.5, "L", color="white", fontsize=16, transform=axes.transAxes, va="center")
        figure.text(0.01, 0.97, caption, color="white", fontsize=12, va="top")
        legend = "cortex: red   medulla: yellow" if Structure.CORTEX in plan.structures else "parenchyma: orange"
        figure.text(0.01, 0.01, legend, color="white", fontsize=11)
        figure.text(0.99, 0.01, NOT_FOR_DIAGNOSIS, color="#ff8080", fontsize=11, ha="right")

    return _page(draw)


def summary_page(measurements: Measurements, qc: QCReport, plan: ReportPlan, model: Model, followup: FollowUp | None = None) -> np.ndarray:
    """The volumes per side that the plan delivers, what is not reported and why, the QC verdict with its findings
    and notes, the model and its intended use; with earlier results of the patient, the change since the prior and
    a chart of each side's parenchyma (and cortex) over time."""
    structures = plan.structures
    charted = followup is not None and bool(followup.points)
    lines = [("Renal volumes (ml)", "white", 16), ("", "white", 8 if charted else 12)]
    lines.append((f"{'':<12}{'right':>10}{'left':>10}", "white", 13))
    for structure in STRUCTURES:
        sent = structure in structures
        cells = [f"{measurements.kidneys[side].volume(structure):10.1f}" if plan.delivers(structure, side) else f"{'-':>10}" for side in SIDES[::-1]]
        lines.append((f"{structure:<12}{''.join(cells)}" + ("" if sent else "  not reported"), "white", 13))
        ranges = [measurements.kidneys[side].ranges.get(structure) if plan.delivers(structure, side) else None for side in SIDES[::-1]]
        if any(ranges):
            cells = [f"{f'{r[0]:.0f}-{r[1]:.0f}':>10}" if r else f"{'-':>10}" for r in ranges]
            lines.append((f"{'  range':<12}{''.join(cells)}  model probability {BAND_THRESHOLDS[0]}-{BAND_THRESHOLDS[1]}", "#a0a0a0", 11))
        changes = [followup.change(structure, side) if followup else None for side in SIDES[::-1]]
        if any(changes):
            since = sorted({c.prior_date.isoformat() for c in changes if c})
            cells = [f"{c.change_ml:+10.1f}" if c else f"{'-':>10}" for c in changes]
            lines.append((f"{'  change':<12}{''.join(cells)}  since {', '.join(since)}", "#a0d8ff", 13))
    if followup is not None:
        skipped: dict[tuple[str, str], list[str]] = {}
        for n in followup.not_compared:
            skipped.setdefault((n.prior_date.isoformat() if n.prior_date else "unknown date", n.why), []).append(n.structure)
        lines += [(f"  study of {when} not compared ({', '.join(s)}): {why}"[:90], "#a0a0a0", 10) for (when, why), s in list(skipped.items())[:2]]
    lines.append(("", "white", 12))
    lines.append((plan.qc_verdict, "#ffb060" if plan.review else "#80ff80", 13))
    lines += [(f"  {line}"[:90], "#ffb060", 10) for line in [*plan.lines(), *qc.lines(), *(str(n) for n in qc.notes)][: 2 if charted else 8]]
    lines.append(("", "white", 12))
    for made in (Structure.PARENCHYMA, Structure.CORTEX):
        algorithm = measurements.algorithms.get(made)
        if algorithm is not None:
            lines.append((f"{made.capitalize()}: {algorithm.name} {algorithm.version}".strip()[:90], "white", 11))
    warning = [] if for_diagnosis(model) else [(NOT_FOR_DIAGNOSIS, "#ff8080", 14)]

    def draw(figure: Figure) -> None:
        y = 0.95
        for text, colour, size in lines if charted else lines + warning:
            figure.text(0.04, y, text, color=colour, fontsize=size, family="monospace", va="top")
            y -= 0.012 * size / 10 * (2.6 if charted else 3.2)
        if charted:
            assert followup is not None
            _chart(figure, followup, structures)
            for text, colour, _ in warning:  # below the charts
                figure.text(0.99, 0.005, text, color=colour, fontsize=11, ha="right", va="bottom")

    return _page(draw)


def _chart(figure: Figure, followup: FollowUp, structures: tuple[str, ...]) -> None:
    """Each side's volumes over time, one panel per side: a line through the comparable results, hollow grey marks
    for those not compared (QC failed, another model), this study's filled and larger."""
    for n, side in enumerate(SIDES[::-1]):
        axes = figure.add_axes((0.09 + n * 0.47, 0.07, 0.40, 0.20), facecolor="black")
        for structure in (Structure.PARENCHYMA, Structure.CORTEX):
            if structure not in structures:
                continue
            points = sorted((p for p in followup.points if (p.structure, p.side) == (structure, side)), key=lambda p: p.date)
            kept = [p for p in points if p.comparable]
            colour = OUTLINES[structure]
            axes.plot(date2num([p.date for p in kept]), [p.ml for p in kept], "-o", color=colour, markersize=4, linewidth=1.5, label=structure)
            others = [p for p in points if not p.comparable]
            axes.plot(date2num([p.date for p in others]), [p.ml for p in others], "o", markerfacecolor="none", markeredgecolor="#909090", markersize=6)
            axes.plot(date2num([p.date for p in points if p.current]), [p.ml for p in points if p.current], "o", color=colour, markersize=8)
        axes.set_title(f"{side} kidney (ml)", color="white", fontsize=10)
        axes.tick_params(colors="white", labelsize=7)
        for spine in axes.spines.values():
            spine.set_color("#808080")
        axes.set_xticks(date2num(sorted({p.date for p in followup.points if p.side == side})))
        axes.xaxis.set_major_formatter(DateFormatter("%Y-%m"))
        axes.set_ylim(0, 1.15 * max((p.ml for p in followup.points if p.side == side), default=1.0))
        if n == 0:
            axes.legend(fontsize=7, facecolor="black", labelcolor="white", edgecolor="#808080", loc="lower left")


def write_sc(
    series: LoadedSeries,
    measurements: Measurements,
    qc: QCReport,
    plan: ReportPlan,
    model: Model,
    uids: ResultUids = RANDOM_UIDS,
    followup: FollowUp | None = None,
) -> list[pydicom.Dataset]:
    """One Secondary Capture series: the summary page, then the key slice of each kidney the plan reports."""
    pages = [summary_page(measurements, qc, plan, model, followup)]
    for side in SIDES[::-1]:
        if side in plan.sides:
            pages.append(slice_page(series, measurements, side, f"{side} kidney, key slice", plan))
    series_uid = uids.uid("sc/series")
    description = SC_DESCRIPTION + (QC_REVIEW_SUFFIX if plan.review else "")
    images: list[pydicom.Dataset] = []
    for number, pixels in enumerate(pages, 1):
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=series.datasets[0],
            pixel_array=pixels,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=series_uid,
            series_number=SC_SERIES_NUMBER,
            sop_instance_uid=uids.uid(f"sc/{number}"),
            instance_number=number,
            manufacturer=MANUFACTURER,
            patient_orientation=("L", "P"),
            transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
        )
        sc.SeriesDescription = description
        sc.BurnedInAnnotation = "YES"  # volumes, verdict and labels are in the pixels
        sc.ImageType = ["DERIVED", "SECONDARY"]
        sc.ConversionType = "WSD"  # workstation
        sc.BodyPartExamined = "ABDOMEN"  # both kidneys on one picture: an unpaired region, so no Laterality (PS3.3 C.7.3.1)
        images.append(sc)
    return images
