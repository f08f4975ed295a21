"""Export a trained nnU-Net fold into ``models/NAME`` with its model card (model.yaml)."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml


@dataclass
class ModelCard:
    """What a model is, what it was trained on, how well it did, and what it is not fit for."""

    name: str
    trainer: str
    configuration: str
    fold: int | str
    labels: dict[str, object]
    spacing_mm: list[float]
    training_data: str
    training: dict[str, object]
    metrics: dict[str, object] = field(default_factory=dict)
    intended_use: str = ""
    not_fit_for: list[str] = field(default_factory=list)
    licence: str = ""  # follows the data it was trained on
    localizer: str = ""  # the model (in the same folder) that finds the kidneys this one is run around; "" none
    findings: dict[str, str] = field(default_factory=dict)  # what evaluations beyond the metrics found, by topic


def export_model(result_folder: Path, fold: int | str, models_root: Path, card: ModelCard) -> Path:
    """Copy plans, dataset.json and the fold's final checkpoint into ``models_root/card.name``."""
    target = models_root / card.name
    fold_dir = target / f"fold_{fold}"
    fold_dir.mkdir(parents=True, exist_ok=True)
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        shutil.copy2(result_folder / name, target / name)
    shutil.copy2(result_folder / f"fold_{fold}" / "checkpoint_final.pth", fold_dir / "checkpoint_final.pth")
    summary = result_folder / f"fold_{fold}" / "validation" / "summary.json"
    if summary.exists():
        card.metrics.setdefault("cross_validation", json.loads(summary.read_text())["mean"])
    (target / "model.yaml").write_text(yaml.safe_dump(asdict(card), sort_keys=False, allow_unicode=True))
    return target
