"""Segment stage: nnU-Net v2 prediction of renal parenchyma and cortex, the model loaded once and kept warm."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from dicomnode.anatomy import canonical_flips
from dicomnode.load import LoadedSeries

log = logging.getLogger(__name__)

#: Where the project's nnU-Net trainers live; nnU-Net finds trainers named in checkpoints there.
TRAINERS_DIR = Path(__file__).resolve().parent.parent / "training" / "nnunet_trainers"
MEDULLA, CORTEX = 1, 2


@dataclass(frozen=True)
class Model:
    """An installed model folder (nnU-Net result layout plus model.yaml)."""

    name: str
    folder: Path
    card: dict
    fold: str

    @classmethod
    def from_folder(cls, folder: Path) -> Model:
        card_path = folder / "model.yaml"
        if not card_path.exists():
            raise FileNotFoundError(f"model {folder} has no model.yaml")
        card = yaml.safe_load(card_path.read_text())
        return cls(card.get("name", folder.name), folder, card, str(card.get("fold", 0)))


@dataclass(frozen=True)
class Segmentation:
    """Predicted labels on the loaded series' grid: 0 background, 1 medulla, 2 cortex."""

    labels: np.ndarray
    model: Model
    device: str


def resolve_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


class Segmenter:
    """Holds an ``nnUNetPredictor`` with the model's weights in memory."""

    def __init__(self, model: Model, device: str = "auto", mirroring: bool = False, tile_step_size: float = 0.5) -> None:
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        os.environ.setdefault("nnUNet_extTrainer", str(TRAINERS_DIR))
        self.model = model
        self.device = resolve_device(device)
        self.predictor = nnUNetPredictor(
            tile_step_size=tile_step_size,
            use_gaussian=True,
            use_mirroring=mirroring,
            perform_everything_on_device=self.device == "cuda",
            device=torch.device(self.device),
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
        )
        fold = int(model.fold) if model.fold.isdigit() else model.fold
        self.predictor.initialize_from_trained_model_folder(str(model.folder), use_folds=(fold,))
        log.info("model %s loaded on %s (mirroring %s)", model.name, self.device, "on" if mirroring else "off")

    def segment(self, series: LoadedSeries) -> Segmentation:
        """Predict on the series, flipped into the axis directions the model was trained in and back."""
        flips = canonical_flips(series.direction)
        volume = np.flip(series.hu, flips) if flips else series.hu
        spacing = [float(series.spacing[2]), float(series.spacing[1]), float(series.spacing[0])]
        labels = self.predictor.predict_single_npy_array(
            np.ascontiguousarray(volume, dtype=np.float32)[None], {"spacing": spacing}, None, None, False
        )
        labels = np.asarray(labels, dtype=np.uint8)
        return Segmentation(np.ascontiguousarray(np.flip(labels, flips)) if flips else labels, self.model, self.device)

