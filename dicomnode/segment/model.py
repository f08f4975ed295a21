"""What a segmenter gives and what made it: the model folder, the algorithm of each structure, the label values and
the segmentation on the series grid; the types the later stages read, without the runtimes that make them."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import yaml

from dicomnode import __version__
from dicomnode.imaging.load import LoadedSeries
from dicomnode.segment.band import VolumeBand


class TissueLabel(enum.IntEnum):
    """Values of the project model's label map (``Segmentation.labels``)."""

    BACKGROUND = 0
    MEDULLA = 1
    CORTEX = 2


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
class Algorithm:
    """A method that made one of the structures, as the SEG and SR name it."""

    name: str
    version: str
    description: str  # what it did, e.g. "renal parenchyma by nnU-Net v2"
    parameters: str = ""


def model_algorithm(model: Model) -> Algorithm:
    """The project's model as the algorithm of parenchyma, cortex and medulla."""
    return Algorithm(model.name, str(model.card.get("version", __version__)), "Renal parenchyma and cortex segmented by nnU-Net v2")


class ModelSide(enum.IntEnum):
    """Values of ``Segmentation.sides``: the side a model that names sides gave each voxel."""

    NONE = 0
    RIGHT = 1
    LEFT = 2


@dataclass(frozen=True)
class Segmentation:
    """Predicted labels on the loaded series' grid: 0 background, 1 medulla, 2 cortex; the algorithm of each structure
    (parenchyma, cortex, medulla); and, from a model with right and left labels, its side of each voxel."""

    labels: np.ndarray
    model: Model
    device: str
    algorithms: dict[str, Algorithm] = field(default_factory=dict)  # by structure; none given: the model made all
    sides: np.ndarray | None = None  # ModelSide values
    notes: list[str] = field(default_factory=list)  # what the segmenter left out, and why
    bands: tuple[VolumeBand, ...] = ()  # the model's own spread of the volumes, where its probabilities were kept

    def algorithm(self, structure: str) -> Algorithm:
        """What made ``structure`` (parenchyma, cortex or medulla)."""
        return self.algorithms.get(structure) or model_algorithm(self.model)


class SeriesSegmenter(Protocol):
    """What the pipeline needs of a segmenter: the project's (``Segmenter``) or an external model's."""

    model: Model
    device: str

    def segment(self, series: LoadedSeries) -> Segmentation: ...


def localizer_of(model: Model, setting: str, folder: Path) -> Model | None:
    """The localizer a ``model.localizer`` setting names: auto, the one ``model``'s card names (none if it names
    none); "none" or "", none; else a model of that name. Models are looked up in ``folder``."""
    name = str(model.card.get("localizer") or "") if setting == "auto" else setting
    return Model.from_folder(folder / name) if name and name != "none" else None
