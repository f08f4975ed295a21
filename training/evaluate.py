"""Evaluate an exported model on annotated cases: Dice, Jaccard and volume error per case and group,
one-way ANOVA of Dice across groups (as the paper's Table 2), a Bland-Altman plot and a report."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import stats

from dicomnode.imaging.load import LoadedSeries
from dicomnode.segment.model import Model, TissueLabel, localizer_of
from dicomnode.segment.segmenter import Segmenter
from training.cases import Case
from training.dataset_import import case_labels, read_image

REGIONS = ("parenchyma", "cortex")


@dataclass(frozen=True)
class RegionScore:
    """Overlap and volumes of one region in one case."""

    dice: float
    jaccard: float
    reference_ml: float
    predicted_ml: float

    @property
    def volume_error_pct(self) -> float:
        return 100.0 * (self.predicted_ml - self.reference_ml) / self.reference_ml if self.reference_ml else float("nan")


@dataclass(frozen=True)
class CaseScore:
    case_id: str
    group: str
    regions: dict[str, RegionScore]


@dataclass(frozen=True)
class Evaluation:
    model: str
    cases: list[CaseScore]

    def mean(self, region: str, metric: str, group: str | None = None) -> float:
        values = [getattr(c.regions[region], metric) for c in self.cases if group is None or c.group == group]
        return float(np.mean(values)) if values else float("nan")

    def groups(self) -> list[str]:
        return sorted({c.group for c in self.cases})

    def anova(self, region: str) -> tuple[float, float] | None:
        """One-way ANOVA of Dice across groups: (F, p), or None with fewer than two groups of two cases."""
        samples = defaultdict(list)
        for case in self.cases:
            samples[case.group].append(case.regions[region].dice)
        usable = [v for v in samples.values() if len(v) >= 2]
        if len(usable) < 2:
            return None
        result = stats.f_oneway(*usable)
        return float(result.statistic), float(result.pvalue)


def score(reference: np.ndarray, predicted: np.ndarray, voxel_ml: float) -> RegionScore:
    intersection = float(np.logical_and(reference, predicted).sum())
    total = float(reference.sum() + predicted.sum())
    union = float(np.logical_or(reference, predicted).sum())
    return RegionScore(
        dice=2 * intersection / total if total else 1.0,
        jaccard=intersection / union if union else 1.0,
        reference_ml=float(reference.sum()) * voxel_ml,
        predicted_ml=float(predicted.sum()) * voxel_ml,
    )


def as_series(image: sitk.Image) -> LoadedSeries:
    return LoadedSeries(
        datasets=[],
        hu=sitk.GetArrayFromImage(image).astype(np.float32),
        origin=np.array(image.GetOrigin()),
        spacing=np.array(image.GetSpacing()),
        direction=np.array(image.GetDirection()).reshape(3, 3),
    )


def evaluate_model(model_folder: Path, cases: list[Case], device: str = "cpu", mirroring: bool = False, localizer: str = "auto") -> Evaluation:
    """Segment every case with the node's own segmenter (with the localizer ``model.localizer`` names) and score it
    against its labels."""
    model = Model.from_folder(model_folder)
    segmenter = Segmenter(model, device, mirroring, localizer=localizer_of(model, localizer, model_folder.parent))
    scores = []
    for case in cases:
        image = read_image(case.image)
        reference = case_labels(case, image)
        series = as_series(image)
        predicted = segmenter.segment(series).labels
        scores.append(
            CaseScore(
                case.case_id,
                case.group,
                {
                    "parenchyma": score(reference > 0, predicted > 0, series.voxel_ml),
                    "cortex": score(reference == TissueLabel.CORTEX, predicted == TissueLabel.CORTEX, series.voxel_ml),
                },
            )
        )
    return Evaluation(segmenter.model.name, scores)


def bland_altman(evaluation: Evaluation, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(REGIONS), figsize=(6 * len(REGIONS), 4.5))
    for ax, region in zip(axes, REGIONS):
        reference = np.array([c.regions[region].reference_ml for c in evaluation.cases])
        predicted = np.array([c.regions[region].predicted_ml for c in evaluation.cases])
        mean, diff = (reference + predicted) / 2, predicted - reference
        bias, sd = float(diff.mean()), float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
        ax.scatter(mean, diff, s=18)
        ax.axhline(bias, color="k", label=f"bias {bias:+.1f} ml")
        for limit in (bias - 1.96 * sd, bias + 1.96 * sd):
            ax.axhline(limit, color="k", linestyle="--")
        ax.set_title(f"{region}: predicted - reference (limits of agreement ±1.96 SD)")
        ax.set_xlabel("mean volume (ml)")
        ax.set_ylabel("difference (ml)")
        ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(evaluation: Evaluation, folder: Path) -> Path:
    """Write report.md, metrics.json and bland_altman.png into ``folder``; returns the report's path."""
    folder.mkdir(parents=True, exist_ok=True)
    bland_altman(evaluation, folder / "bland_altman.png")
    metrics = {
        "model": evaluation.model,
        "cases": len(evaluation.cases),
        "mean": {r: {m: evaluation.mean(r, m) for m in ("dice", "jaccard", "volume_error_pct")} for r in REGIONS},
        "groups": {g: {r: evaluation.mean(r, "dice", g) for r in REGIONS} for g in evaluation.groups()},
        "anova": {r: evaluation.anova(r) for r in REGIONS},
        "per_case": [
            {"case": c.case_id, "group": c.group, **{r: {**asdict(s), "volume_error_pct": s.volume_error_pct} for r, s in c.regions.items()}}
            for c in evaluation.cases
        ],
    }
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    lines = [
        f"# Evaluation of {evaluation.model}",
        "",
        f"{len(evaluation.cases)} cases. Dice and Jaccard per region; volume error = (predicted - reference) / reference.",
        "",
        "| region | Dice | Jaccard | volume error (%) |",
        "| --- | --- | --- | --- |",
    ]
    for r in REGIONS:
        lines.append(f"| {r} | {evaluation.mean(r, 'dice'):.4f} | {evaluation.mean(r, 'jaccard'):.4f} | {evaluation.mean(r, 'volume_error_pct'):+.2f} |")
    lines += ["", "## Dice per group (one-way ANOVA across groups)", "", "| group | n | parenchyma | cortex |", "| --- | --- | --- | --- |"]
    for g in evaluation.groups():
        n = sum(c.group == g for c in evaluation.cases)
        lines.append(f"| {g or '-'} | {n} | {evaluation.mean('parenchyma', 'dice', g):.4f} | {evaluation.mean('cortex', 'dice', g):.4f} |")
    for r in REGIONS:
        result = evaluation.anova(r)
        lines.append("")
        lines.append(f"ANOVA {r}: " + (f"F = {result[0]:.3f}, p = {result[1]:.3f}" if result else "not computed (fewer than two groups of two cases)"))
    lines += [
        "",
        "## Per case",
        "",
        "| case | group | parenchyma Dice | cortex Dice | parenchyma ml (ref / pred) | cortex ml (ref / pred) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in evaluation.cases:
        p, k = c.regions["parenchyma"], c.regions["cortex"]
        volumes = f"{p.reference_ml:.1f} / {p.predicted_ml:.1f} | {k.reference_ml:.1f} / {k.predicted_ml:.1f}"
        lines.append(f"| {c.case_id} | {c.group} | {p.dice:.4f} | {k.dice:.4f} | {volumes} |")
    lines += ["", "Bland-Altman plot: bland_altman.png", ""]
    report = folder / "report.md"
    report.write_text("\n".join(lines))
    return report


def record_in_card(card_path: Path, evaluation: Evaluation, report: Path, manifest: Path) -> None:
    """Add this evaluation's mean figures to a model card under ``metrics.evaluation``."""
    figures = {
        "cases": len(evaluation.cases),
        "manifest": manifest.name,
        "report": card_relative(report, card_path),
        **{f"{r}_{m}": round(evaluation.mean(r, m), 4) for r in REGIONS for m in ("dice", "jaccard", "volume_error_pct")},
    }
    put_in_card(card_path, "evaluation", figures)


def card_relative(path: Path, card_path: Path) -> str:
    """``path`` as a model card names it: relative to the card's folder where it lies inside it."""
    return str(path.relative_to(card_path.parent)) if path.is_relative_to(card_path.parent) else str(path)


def put_in_card(card_path: Path, key: str, figures: dict[str, object]) -> None:
    """Set ``metrics[key]`` of a model card (model.yaml) to ``figures``, replacing what was there."""
    import yaml

    card = yaml.safe_load(card_path.read_text())
    card.setdefault("metrics", {})[key] = figures
    card_path.write_text(yaml.safe_dump(card, sort_keys=False, allow_unicode=True))
