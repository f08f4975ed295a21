"""Evaluate a model on real CT through the node's own pipeline: select -> load -> segment -> measure -> QC -> write.

Each case is a real CT (a NIfTI/NRRD volume, written as a DICOM series whose header records no contrast agent, or a
folder of real DICOM slices) with one parenchyma mask per side, or none where no kidney is in view. Real cases here
have no cortex labels, so the figures are per-side parenchyma Dice and volume, the prediction outside the kidneys
kept (stray), the node's verdict and what it would have delivered. Cases with truth by construction
(:mod:`training.truth_case`: the repainted real CTs, the holdout renderer's) add cortex, are written with an arterial
header, and take their reference volumes from the grid they were drawn on. A site's reader corrections, which the node
keeps in the same layout, are read the same way, with cortex where the reader drew it and the phase the node measured.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import CTImageStorage, generate_uid

from dicomnode.config import NodeConfig
from dicomnode.instance import Instance
from dicomnode.node.pipeline import process_study
from dicomnode.renal import Side, Structure
from dicomnode.segment.model import Model
from dicomnode.segment.segmenter import Segmenter
from dicomnode.store.states import Outcome
from training.evaluate import card_relative, put_in_card, score
from training.truth_case import STRUCTURE_LABELS, truth_case_names
from training.volume_dicom import SeriesTags, write_volume_series


@dataclass(frozen=True)
class RealCase:
    """A real CT and its reference: a parenchyma mask per side on its grid, or none (no kidney in view)."""

    case_id: str
    image: Path  # a volume file, or a folder of DICOM slices
    left: Path | None
    right: Path | None
    reference: str  # who drew the masks, or why there are none
    cortex: dict[Side, Path] | None = None  # cortex masks, where the case has them
    truth_ml: dict[str, dict[str, float]] | None = None  # side: structure: ml, where counted on a finer grid
    arterial: bool = False  # written with an arterial header (contrast given, 30 s after the bolus)


def truth_cases(folder: Path) -> list[RealCase]:
    """The cases :func:`training.truth_case.write_truth_case` (or the node, for a reader's correction) wrote into
    ``folder``. Its json may say which sides were labelled (``sides_labelled``, default both: a side left out is not
    scored), whether cortex was (``cortex_labelled``, default true: else cortex is not scored) and the phase the series
    is written in (``arterial``, default true)."""
    cases = []
    for name in truth_case_names(folder):
        metadata = json.loads((folder / f"{name}.json").read_text())
        masks = {side: {structure: folder / f"{name}_{side.value}_{structure}.nii.gz" for structure in STRUCTURE_LABELS} for side in Side}
        labelled = metadata.get("sides_labelled", [side.value for side in Side])
        cases.append(
            RealCase(
                name,
                folder / f"{name}.nii.gz",
                masks[Side.LEFT]["parenchyma"] if Side.LEFT in labelled else None,
                masks[Side.RIGHT]["parenchyma"] if Side.RIGHT in labelled else None,
                _truth_reference(metadata),
                cortex={side: masks[side]["cortex"] for side in Side} if metadata.get("cortex_labelled", True) else None,
                truth_ml=metadata.get("truth_ml"),
                arterial=bool(metadata.get("arterial", True)),
            )
        )
    return cases


def _truth_reference(metadata: dict) -> str:
    """Who drew a truth case's masks: a reader (the node's site cases) or the renderer."""
    if "reader" in metadata:
        return f"{metadata.get('source', 'reader correction')} by {metadata['reader']}"
    return f"by construction ({metadata.get('renderer', 'repainted real CT')})"


def shared_cases(data: Path) -> list[RealCase]:
    """The real cases under ``shared/data``: ``real_ct`` (model-made masks), ``real_ct2/s0009`` (people-corrected
    masks, non-contrast) and ``real_ct/example_ct_dicom`` (real DICOM, no kidney in view)."""
    real, second = data / "real_ct", data / "real_ct2" / "s0009"
    return [
        RealCase(
            "real_ct",
            real / "example_ct.nii.gz",
            real / "example_ct_labels" / "kidney_left.nii.gz",
            real / "example_ct_labels" / "kidney_right.nii.gz",
            "TotalSegmentator v1 (a model)",
        ),
        RealCase("s0009", second / "ct.nii.gz", second / "kidney_left.nii.gz", second / "kidney_right.nii.gz", "TotalSegmentator, corrected by people"),
        RealCase("example_ct_dicom", real / "example_ct_dicom", None, None, "no kidney in view (T11-T12)"),
    ]


@dataclass(frozen=True)
class SideScore:
    side: str
    dice: float
    reference_ml: float
    predicted_ml: float  # 0 where the node found no kidney on this side
    cortex_dice: float | None = None
    cortex_reference_ml: float | None = None
    cortex_predicted_ml: float | None = None
    sent: bool = False  # whether the node would deliver this side's parenchyma
    flagged: bool = False  # sent with "QC: review"
    left_out_share: float | None = None  # the model-free checks' figures (KidneyMeasurement)
    thick_cortex_share: float | None = None
    parenchyma_spread: float | None = None  # the width of the model's own range, as a share of the volume (band.py)
    cortex_spread: float | None = None

    @property
    def volume_error_pct(self) -> float:
        return 100.0 * (self.predicted_ml - self.reference_ml) / self.reference_ml if self.reference_ml else float("nan")

    @property
    def cortex_error_pct(self) -> float | None:
        if not self.cortex_reference_ml or self.cortex_predicted_ml is None:
            return None
        return 100.0 * (self.cortex_predicted_ml - self.cortex_reference_ml) / self.cortex_reference_ml


@dataclass(frozen=True)
class RealScore:
    case_id: str
    reference: str
    sides: list[SideScore]  # empty where the case has no kidney in view
    predicted_ml: float  # everything the model called kidney
    stray_ml: float  # of that, outside the kidneys kept
    verdict: str
    delivered: list[str]  # the structures whose volumes the node would send
    qc_findings: list[str]
    seconds: float


def evaluate_real(model: Model, cases: list[RealCase], device: str = "cpu", localizer: Model | None = None) -> list[RealScore]:
    """Run each case through the node's pipeline with the default settings, ``model`` behind ``localizer`` (none:
    without one), and score what it measured."""
    config = NodeConfig()
    segmenter = Segmenter(model, device, localizer=localizer)
    scores = []
    with tempfile.TemporaryDirectory() as scratch:
        for case in cases:
            files = _series_files(case, Path(scratch) / case.case_id)
            start = time.perf_counter()
            processed = process_study(_instances(files), config, segmenter)
            seconds = time.perf_counter() - start
            measurements = processed.measurements
            delivered = [str(s) for s in processed.structures] if processed.outcome is Outcome.RESULT else []
            sides = []
            for side, path in ((Side.LEFT, case.left), (Side.RIGHT, case.right)):
                if path is None:
                    continue
                kidney = measurements.kidneys.get(side) if measurements else None
                parenchyma = _scored(path, kidney.parenchyma if kidney is not None else None, case.truth_ml, side, "parenchyma")
                cortex: tuple[float | None, float | None, float | None] = (None, None, None)
                if case.cortex:
                    cortex = _scored(case.cortex[side], kidney.cortex if kidney is not None else None, case.truth_ml, side, "cortex")
                plan = processed.plan
                sent = kidney is not None and bool(delivered) and plan is not None and plan.delivers(Structure.PARENCHYMA, side)
                checks: tuple[float | None, ...] = (None,) * 4
                if kidney is not None:
                    checks = (kidney.left_out_share, kidney.thick_cortex_share, kidney.spread(Structure.PARENCHYMA), kidney.spread(Structure.CORTEX))
                sides.append(SideScore(side.value, *parenchyma, *cortex, sent, sent and plan is not None and plan.review, *checks))
            predicted_ml = measurements.predicted_ml if measurements else 0.0
            kept = measurements.total_parenchyma_ml if measurements else 0.0
            findings = processed.qc.lines() if processed.qc else []
            scores.append(
                RealScore(
                    case.case_id,
                    case.reference,
                    sides,
                    round(predicted_ml, 1),
                    round(predicted_ml - kept, 1),
                    processed.verdict,
                    delivered,
                    findings,
                    round(seconds, 1),
                )
            )
    return scores


def _scored(path: Path, predicted: np.ndarray | None, truth_ml: dict[str, dict[str, float]] | None, side: Side, structure: str) -> tuple[float, float, float]:
    """Dice, reference ml and predicted ml of one structure on one side; the reference volume from ``truth_ml`` where
    the case counted it on a finer grid than the one it was written on."""
    image = sitk.ReadImage(str(path))
    reference = sitk.GetArrayFromImage(image) > 0
    region = score(reference, predicted if predicted is not None else np.zeros_like(reference), float(np.prod(image.GetSpacing())) / 1000.0)
    reference_ml = truth_ml[side.value][structure] if truth_ml and side.value in truth_ml else region.reference_ml
    return round(region.dice, 4), round(reference_ml, 1), round(region.predicted_ml, 1)


def _series_files(case: RealCase, folder: Path) -> list[Path]:
    """DICOM slices of the case: a volume written as a series that records no contrast agent (the node then finds
    the phase from the image), or a copy of real slices with any empty Study, Series or SOP Instance UID filled in."""
    if not case.image.is_dir():
        tags = (
            SeriesTags(description="Arterial", seconds_after_bolus=30.0, study_seed=case.case_id)
            if case.arterial
            else SeriesTags(description="Abdomen", seconds_after_bolus=None, study_seed=case.case_id)
        )
        return write_volume_series(sitk.ReadImage(str(case.image)), folder, tags)
    folder.mkdir(parents=True, exist_ok=True)
    study, series, files = generate_uid(entropy_srcs=[case.case_id, "study"]), generate_uid(entropy_srcs=[case.case_id, "series"]), []
    for path in sorted(p for p in case.image.iterdir() if p.is_file()):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = ds.get("StudyInstanceUID") or study
        ds.SeriesInstanceUID = ds.get("SeriesInstanceUID") or series
        ds.SOPInstanceUID = ds.get("SOPInstanceUID") or ds.file_meta.MediaStorageSOPInstanceUID
        ds.SOPClassUID = ds.get("SOPClassUID") or ds.file_meta.MediaStorageSOPClassUID
        files.append(folder / path.name)
        ds.save_as(files[-1])
    return files


def _instances(files: list[Path]) -> list[Instance]:
    instances = []
    for seq, path in enumerate(files):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        instances.append(
            Instance(seq, str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.get("SOPClassUID", CTImageStorage)), path)
        )
    return instances


def write_real_report(scores: list[RealScore], model: str, out: Path) -> Path:
    """``real_ct.md`` and ``real_ct.json`` in ``out``; returns the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "real_ct.json").write_text(json.dumps([asdict(s) for s in scores], indent=2))
    lines = [
        f"# {model} on real CT",
        "",
        "Each case through the node's pipeline with the default settings (selection, image phase check, segment,",
        "measure, QC): per-side parenchyma against the case's reference masks (who drew them is in the table), the",
        "prediction outside the kidneys kept (stray), the verdict, and the structures whose volumes would be sent.",
        "",
        "| case | reference | side | Dice | reference ml | predicted ml | volume error | stray ml | delivered | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case in scores:
        delivered = ", ".join(case.delivered) or "nothing"
        rows = [f"{s.side} | {s.dice:.3f} | {s.reference_ml:.1f} | {s.predicted_ml:.1f} | {s.volume_error_pct:+.1f} %" for s in case.sides]
        for figures in rows or ["- | - | - | - | -"]:
            lines.append(f"| {case.case_id} | {case.reference} | {figures} | {case.stray_ml:.1f} | {delivered} | {case.verdict} |")
    for case in scores:
        if case.qc_findings:
            lines += ["", f"QC findings for {case.case_id}:", *(f"- {line}" for line in case.qc_findings)]
    path = out / "real_ct.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def record_real_in_card(card_path: Path, scores: list[RealScore], report: Path, localizer: str) -> None:
    """Put these scores in a model card under ``metrics.real_ct`` (replacing what was there)."""
    cases: dict[str, dict[str, object]] = {}
    for case in scores:
        entry: dict[str, object] = {"reference": case.reference, "verdict": case.verdict, "sent": case.delivered or "nothing", "stray_ml": case.stray_ml}
        for side in case.sides:
            entry[f"{side.side}_parenchyma"] = {"dice": side.dice, "reference_ml": side.reference_ml, "measured_ml": side.predicted_ml}
        cases[case.case_id] = entry
    how = f"dicomnode-train evaluate-real: each case through the node's pipeline with the default settings, localizer {localizer}"
    put_in_card(card_path, "real_ct", {"report": card_relative(report, card_path), "how": how, "cases": cases})
