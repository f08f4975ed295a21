"""Train nnU-Net folds with the paper's recipe, 5-fold CV stratified by group, and pick the best fold."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class FoldResult:
    """Validation result of one trained fold (no Dice where it was not validated)."""

    fold: int
    dice: dict[str, float]  # region name -> mean validation Dice
    folder: Path

    @property
    def mean_dice(self) -> float:
        """Mean over the labels that were present (a declared label never drawn has no Dice)."""
        return float(np.nanmean(list(self.dice.values())))


def stratified_folds(groups: dict[str, str], n_folds: int = 5, seed: int = 12345) -> list[dict[str, list[str]]]:
    """nnU-Net splits in which each group is spread evenly over the folds."""
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    offset = 0
    for group in sorted(set(groups.values())):
        members = sorted(case for case, g in groups.items() if g == group)
        rng.shuffle(members)
        for i, case in enumerate(members):
            fold_of[case] = (i + offset) % n_folds
        offset += len(members)
    cases = sorted(groups)
    return [{"train": [c for c in cases if fold_of[c] != k], "val": [c for c in cases if fold_of[c] == k]} for k in range(n_folds)]


def write_splits(preprocessed_dataset: Path, groups: dict[str, str], n_folds: int = 5) -> None:
    (preprocessed_dataset / "splits_final.json").write_text(json.dumps(stratified_folds(groups, n_folds), indent=2))


def train_fold(
    preprocessed_dataset: Path,
    trainer_name: str,
    configuration: str,
    fold: int,
    device: str,
    resume: bool = False,
    pretrained: Path | None = None,
    validate: bool = True,
) -> FoldResult:
    """Train and validate one fold with the named trainer (a schedule of ``TRAINERS``); returns its validation Dice per region.

    With ``resume``, training continues from the fold's latest checkpoint where there is one (nnU-Net saves it
    every few epochs), so a long CPU run can be split over several sessions. With ``pretrained`` (a checkpoint of the
    same network, e.g. a shipped model's), a new training starts from its weights, every layer included: fine-tuning.
    Without ``validate``, nnU-Net's validation of the fold is skipped (the caller tests it otherwise): no Dice.
    """
    import torch

    from dicomnode.segment.nnunet_trainers.nnUNetTrainerPaper import TRAINERS

    if trainer_name not in TRAINERS:
        raise ValueError(f"trainer_name: {trainer_name!r} is not one of {', '.join(sorted(TRAINERS))}")
    trainer_class = TRAINERS[trainer_name]
    plans = json.loads((preprocessed_dataset / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((preprocessed_dataset / "dataset.json").read_text())
    probe = trainer_class({**plans, "continue_training": False}, configuration, fold, dataset_json, torch.device("cpu"))
    checkpoint = Path(probe.output_folder) / "checkpoint_latest.pth"
    resume = resume and checkpoint.exists()
    plans["continue_training"] = resume  # nnU-Net's logger appends to the fold's log instead of starting anew
    trainer = trainer_class(plans, configuration, fold, dataset_json, torch.device(device))
    if resume:
        trainer.load_checkpoint(str(checkpoint))
    elif pretrained is not None:
        start_from(trainer, pretrained)
    trainer.run_training()
    if not validate:
        return FoldResult(fold, {}, Path(trainer.output_folder))
    trainer.perform_actual_validation()
    return read_fold(Path(trainer.output_folder), fold)


def start_from(trainer, checkpoint: Path) -> None:
    """Load every weight of ``checkpoint`` into the trainer's network; the shapes must match (the same plan)."""
    import torch

    trainer.initialize()
    weights = torch.load(str(checkpoint), map_location="cpu", weights_only=False)["network_weights"]
    own = trainer.network.state_dict()
    wrong = sorted(k for k in own if k not in weights or weights[k].shape != own[k].shape)
    if wrong:
        raise ValueError(f"pretrained: {checkpoint} is not a checkpoint of this network ({len(wrong)} weights differ, e.g. {wrong[0]})")
    trainer.network.load_state_dict(weights)


def read_fold(folder: Path, fold: int) -> FoldResult:
    summary = json.loads((folder / "validation" / "summary.json").read_text())
    labels = json.loads((folder.parent / "dataset.json").read_text())["labels"]
    names = {str(value): name for name, value in labels.items() if isinstance(value, int) and value}  # plain labels
    names.update({"(1, 2)": "parenchyma", "(2,)": "cortex"} if "parenchyma" in labels else {})  # the project's regions
    dice = {names.get(key, key): float(value["Dice"]) for key, value in summary["mean"].items()}
    return FoldResult(fold, dice, folder)


def select_best(results: list[FoldResult]) -> FoldResult:
    """The fold with the highest mean validation Dice over the regions."""
    return max(results, key=lambda r: r.mean_dice)
