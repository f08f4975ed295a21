"""Evaluate a model on real CT with per-side kidney masks: the node's own segment -> measure -> QC path.

Real cases here have parenchyma masks per side (no cortex labels), so the figures are per-side parenchyma Dice
and volume, the side the node assigned, and the QC verdict the node would have given.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dicomnode.aorta import ImagePhase
from dicomnode.config import QCConfig
from dicomnode.measure import SIDES, measure
from dicomnode.qc import check
from dicomnode.segment import Model, Segmenter
from training.evaluate import as_series, score


@dataclass(frozen=True)
class RealCase:
    """A real CT volume and one parenchyma mask per side on its grid; ``reference`` says who drew the masks."""

    case_id: str
    image: Path
    left: Path
    right: Path
    reference: str


@dataclass(frozen=True)
class SideScore:
    side: str
    dice: float
    reference_ml: float
    predicted_ml: float  # 0 where the node found no kidney on this side

    @property
    def volume_error_pct(self) -> float:
        return 100.0 * (self.predicted_ml - self.reference_ml) / self.reference_ml


@dataclass(frozen=True)
class RealScore:
    case_id: str
    reference: str
    sides: list[SideScore]
    qc_verdict: str
    qc_findings: list[str]
    seconds: float


def evaluate_real(model_folder: Path, cases: list[RealCase], device: str = "cpu") -> list[RealScore]:
    """Segment each case, measure it as the node does (sides from the anatomy) and score each side."""
    import time

    segmenter = Segmenter(Model.from_folder(model_folder), device)
    scores = []
    for case in cases:
        image = sitk.ReadImage(str(case.image))
        series = as_series(image)
        start = time.perf_counter()
        measurements = measure(series, segmenter.segment(series))
        seconds = time.perf_counter() - start
        report = check(measurements, ImagePhase.UNKNOWN, QCConfig())
        sides = []
        for side in SIDES:
            reference = sitk.GetArrayFromImage(sitk.ReadImage(str(case.left if side == "left" else case.right))) > 0
            kidney = measurements.kidneys.get(side)
            predicted = kidney.parenchyma if kidney is not None else np.zeros_like(reference)
            region = score(reference, predicted, series.voxel_ml)
            sides.append(SideScore(side, round(region.dice, 4), round(region.reference_ml, 1), round(region.predicted_ml, 1)))
        scores.append(RealScore(case.case_id, case.reference, sides, report.verdict, report.lines(), round(seconds, 1)))
    return scores


def write_real_report(scores: list[RealScore], model: str, out: Path) -> Path:
    """``real_ct.md`` and ``real_ct.json`` in ``out``; returns the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "real_ct.json").write_text(json.dumps([asdict(s) for s in scores], indent=2))
    lines = [
        f"# {model} on real CT",
        "",
        "Per-side parenchyma against the case's reference masks (who drew them is in the table); sides as the node",
        "assigns them (midline from the spine); QC as the node's gate judges the measurements (phase not checked here).",
        "",
        "| case | reference | side | Dice | reference ml | predicted ml | volume error | QC |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case in scores:
        for side in case.sides:
            lines.append(
                f"| {case.case_id} | {case.reference} | {side.side} | {side.dice:.3f} | {side.reference_ml:.1f} | "
                f"{side.predicted_ml:.1f} | {side.volume_error_pct:+.1f} % | {case.qc_verdict} |"
            )
    for case in scores:
        if case.qc_findings:
            lines += ["", f"QC findings for {case.case_id}:", *(f"- {line}" for line in case.qc_findings)]
    path = out / "real_ct.md"
    path.write_text("\n".join(lines) + "\n")
    return path
