"""Renal parenchyma from an nnU-Net v2 model trained elsewhere (TotalSegmentator's organ model, or any other), with
cortex and medulla added inside it by the project's model or by intensity.

The external model sees the series as its own training data looked (``dicomnode.segment.external_arrays``: orientation and
isotropic spacing as TotalSegmentator prepares images); its right and left kidney labels make the parenchyma, and
the side it gave each voxel travels on so that QC can compare it with the side the anatomy gives.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dicomnode.config import ExternalModelConfig, missing_model_files
from dicomnode.imaging.load import LoadedSeries
from dicomnode.options import CortexMethod, Orientation, Runtime
from dicomnode.renal import Structure
from dicomnode.segment.cortex import split_cortex
from dicomnode.segment.external_arrays import reorientation, resample_image, resample_labels
from dicomnode.segment.model import Algorithm, Model, ModelSide, Segmentation, TissueLabel
from dicomnode.segment.segmenter import Segmenter, boxes_around, kidney_sized, load_predictor, resolve_device

log = logging.getLogger(__name__)

#: Version of the intensity split (``dicomnode.segment.cortex``), named in the SEG and SR.
INTENSITY_SPLIT_VERSION = "1"


@dataclass(frozen=True)
class ExternalModel:
    """An nnU-Net v2 results folder from elsewhere and how to use it."""

    folder: Path  # holds dataset.json, plans.json and fold_<fold>/<checkpoint>
    name: str
    version: str
    fold: str
    checkpoint: str
    right_label: int
    left_label: int
    orientation: Orientation
    spacing_mm: float  # isotropic resampling before prediction; 0: none (nnU-Net resamples to its plan)
    tile_step_size: float
    licence: str

    def problems(self) -> list[str]:
        """What keeps the folder from being used, one line each (empty when it is usable)."""
        found = missing_model_files(self.folder, self.fold, self.checkpoint)
        if found:
            return found
        labels = self.label_names()
        for key, value in (("right_label", self.right_label), ("left_label", self.left_label)):
            if value not in labels:
                found.append(f"{key}: {value} is not a label of {self.folder / 'dataset.json'} ({', '.join(f'{n}={v}' for v, n in sorted(labels.items()))})")
        return found

    def label_names(self) -> dict[int, str]:
        """The label values of the model's dataset.json and their names (region-based labels left out)."""
        labels = json.loads((self.folder / "dataset.json").read_text())["labels"]
        return {int(value): name for name, value in labels.items() if isinstance(value, int)}

    @classmethod
    def from_config(cls, settings: ExternalModelConfig, folder: Path) -> ExternalModel:
        """The configured model (``model.external``), its folder resolved against the configuration's folder."""
        return cls(
            folder,
            settings.name,
            settings.version,
            settings.fold,
            settings.checkpoint,
            settings.right_label,
            settings.left_label,
            settings.orientation,
            settings.spacing_mm,
            settings.tile_step_size,
            settings.licence,
        )

    def as_model(self) -> Model:
        """The folder as a ``Model`` whose card says what it is."""
        card = {"name": self.name, "version": self.version, "licence": self.licence, "for_diagnosis": False, "source": "external"}
        return Model(self.name, self.folder, card, self.fold)


class ExternalSegmenter:
    """Parenchyma by an external model, cortex and medulla by ``cortex``; the same ``segment`` as ``Segmenter``."""

    def __init__(self, external: ExternalModel, cortex: CortexMethod, project: Segmenter | None, device: str = "auto", runtime: Runtime = Runtime.AUTO) -> None:
        found = external.problems()
        if found:
            raise ValueError("external model: " + "; ".join(found))
        if cortex is CortexMethod.MODEL and project is None:
            raise ValueError("project: the cortex method 'model' needs the project's model")
        self.external = external
        self.cortex = cortex
        self.project = project
        self.device = resolve_device(device)
        self.model = external.as_model()
        self.predictor = load_predictor(external.folder, external.fold, self.device, False, external.tile_step_size, external.checkpoint, runtime)
        names = external.label_names()
        log.info(
            "external model %s %s loaded on %s: right kidney = label %d (%s), left = %d (%s), %s, %s",
            external.name,
            external.version,
            self.device,
            external.right_label,
            names[external.right_label],
            external.left_label,
            names[external.left_label],
            external.orientation.value,
            f"{external.spacing_mm:g} mm isotropic" if external.spacing_mm else "its own spacing",
        )

    def sides(self, series: LoadedSeries) -> np.ndarray:
        """The external model's kidneys on the series grid: 0 none, ``ModelSide.RIGHT``, ``ModelSide.LEFT``."""
        turn = reorientation(series.direction, self.external.orientation)
        spacing = turn.spacing((float(series.spacing[0]), float(series.spacing[1]), float(series.spacing[2])))
        volume = turn.forward(series.hu)
        shape = volume.shape
        if self.external.spacing_mm:
            volume = resample_image(volume, spacing, self.external.spacing_mm)
            spacing = (self.external.spacing_mm,) * 3
        prediction = self.predictor.predict_single_npy_array(
            np.ascontiguousarray(volume, np.float32)[None], {"spacing": [float(v) for v in spacing]}, None, None, False
        )
        labels = np.asarray(prediction)
        sides = np.zeros(labels.shape, np.uint8)
        sides[labels == self.external.right_label] = ModelSide.RIGHT
        sides[labels == self.external.left_label] = ModelSide.LEFT
        if self.external.spacing_mm:
            sides = resample_labels(sides, shape)
        return np.ascontiguousarray(turn.backward(sides))

    def segment(self, series: LoadedSeries) -> Segmentation:
        sides = self.sides(series)
        parenchyma = sides > 0
        if self.cortex is CortexMethod.INTENSITY:
            kidneys = [sides == ModelSide.RIGHT, sides == ModelSide.LEFT]
            cortex = split_cortex(series.hu, kidneys, series.spacing_zyx) & parenchyma
            method = Algorithm(
                "Renal cortex by intensity",
                INTENSITY_SPLIT_VERSION,
                "Cortex and medulla split by Otsu's threshold of HU within each kidney",
                f"parenchyma: {self.model.name}",
            )
        else:
            assert self.project is not None
            cortex = model_cortex(self.project, series, parenchyma)
            project = self.project.model
            method = Algorithm(
                project.name,
                str(project.card.get("version", "")),
                "Renal cortex by the project's nnU-Net v2 model, kept inside the external parenchyma",
                f"parenchyma: {self.model.name}",
            )
        labels = np.zeros(series.hu.shape, np.uint8)
        labels[parenchyma] = TissueLabel.MEDULLA
        labels[cortex] = TissueLabel.CORTEX
        parenchyma_algorithm = Algorithm(self.model.name, self.external.version, "Renal parenchyma by an external nnU-Net v2 model")
        algorithms: dict[str, Algorithm] = {Structure.PARENCHYMA: parenchyma_algorithm, Structure.CORTEX: method, Structure.MEDULLA: method}
        return Segmentation(labels, self.model, self.device, algorithms, sides)


def model_cortex(project: Segmenter, series: LoadedSeries, parenchyma: np.ndarray) -> np.ndarray:
    """The project model's cortex inside ``parenchyma``, predicted only around each of its kidneys (with
    ``CASCADE_MARGIN_MM`` of context), not over the whole volume."""
    cortex = np.zeros(parenchyma.shape, bool)
    spacing = np.array(series.spacing_zyx)
    components, sizes = kidney_sized(parenchyma, spacing)
    for box in boxes_around(components, list(sizes), spacing):
        cortex[box] |= project.segment(series.crop(box), cascade=False).labels == TissueLabel.CORTEX
    return cortex & parenchyma
