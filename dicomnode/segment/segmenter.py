"""Segment stage: nnU-Net v2 prediction of renal parenchyma and cortex, the model loaded once and kept warm."""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml
from scipy import ndimage

from dicomnode import __version__
from dicomnode.config import Runtime
from dicomnode.imaging.anatomy import bone_like, canonical_flips, shell_box
from dicomnode.imaging.load import LoadedSeries
from dicomnode.priors import KIDNEY_PART_ML
from dicomnode.renal import STRUCTURES

log = logging.getLogger(__name__)

#: Where the project's nnU-Net trainers live; nnU-Net finds the trainer a checkpoint names there.
TRAINERS_DIR = Path(__file__).resolve().parent / "nnunet_trainers"


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

    def algorithm(self, structure: str) -> Algorithm:
        """What made ``structure`` (parenchyma, cortex or medulla)."""
        return self.algorithms.get(structure) or model_algorithm(self.model)


def resolve_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def uses_onnxruntime(runtime: Runtime, device: str) -> bool:
    """Whether ``runtime`` on the resolved ``device`` means ONNX Runtime; it runs on the CPU only."""
    if runtime is Runtime.ONNXRUNTIME and device != "cpu":
        raise ValueError(f"runtime: onnxruntime runs on the CPU only, and the device is {device}")
    return runtime is Runtime.ONNXRUNTIME or (runtime is Runtime.AUTO and device == "cpu")


def load_predictor(
    folder: Path, fold: str, device: str, mirroring: bool, tile_step_size: float, checkpoint: str = "checkpoint_final.pth", runtime: Runtime = Runtime.AUTO
) -> Any:
    """An ``nnUNetPredictor`` with the weights of ``folder`` (an nnU-Net v2 results folder) in memory; its network
    runs in ONNX Runtime where ``runtime`` says so (``OnnxNetwork``)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    os.environ.setdefault("nnUNet_extTrainer", str(TRAINERS_DIR))
    predictor = nnUNetPredictor(
        tile_step_size=tile_step_size,
        use_gaussian=True,
        use_mirroring=mirroring,
        perform_everything_on_device=device == "cuda",
        device=torch.device(device),
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=(int(fold) if fold.isdigit() else fold,), checkpoint_name=checkpoint)
    if uses_onnxruntime(runtime, device):
        from dicomnode.segment.onnx_network import OnnxNetwork

        channels = len(predictor.dataset_json["channel_names"])
        tile = tuple(int(n) for n in predictor.configuration_manager.patch_size)
        predictor.network = OnnxNetwork(predictor.network, predictor.list_of_parameters[0], tile, channels, torch.get_num_threads())
    return predictor


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


class Segmenter:
    """Holds an ``nnUNetPredictor`` with the model's weights in memory, and the localizer's where there is one."""

    def __init__(
        self,
        model: Model,
        device: str = "auto",
        mirroring: bool = False,
        tile_step_size: float = 0.5,
        cascade: bool = True,
        runtime: Runtime = Runtime.AUTO,
        localizer: Model | None = None,
    ) -> None:
        self.model = model
        self.cascade = cascade
        self.tile_step_size = tile_step_size
        self.device = resolve_device(device)
        self.runtime = Runtime.ONNXRUNTIME if uses_onnxruntime(runtime, self.device) else Runtime.TORCH
        self.predictor = load_predictor(model.folder, model.fold, self.device, mirroring, tile_step_size, runtime=self.runtime)
        self.localizer = localizer
        self.locator = None if localizer is None else load_predictor(localizer.folder, localizer.fold, self.device, False, 0.5, runtime=self.runtime)
        log.info(
            "model %s%s loaded on %s in %s (mirroring %s)",
            model.name,
            f" with localizer {localizer.name}" if localizer else "",
            self.device,
            self.runtime.value,
            "on" if mirroring else "off",
        )

    def segment(self, series: LoadedSeries, cascade: bool | None = None) -> Segmentation:
        """Predict on the series, flipped into the axis directions the model was trained in and back.

        A series finer than the model's spacing is first reduced to it here (smoothed, then linearly resampled):
        nnU-Net would otherwise resample its class probabilities over the full grid, several GB for a thin-slice
        abdomen. Behind a localizer, the probabilities of each kidney's box are brought back to the series grid
        linearly, box by box, so that the outline is as smooth as the series is fine; elsewhere the labels are
        brought back by nearest neighbour. ``cascade`` overrides the segmenter's setting for this call.
        """
        flips = canonical_flips(series.direction)
        volume = np.flip(series.hu, flips) if flips else series.hu
        spacing = np.array(series.spacing_zyx)
        coarse = np.maximum(spacing, np.array(self.predictor.configuration_manager.spacing, float))
        reduce = bool(np.any(coarse > REDUCE_ABOVE * spacing))
        if reduce:
            shape = np.maximum(np.round(np.array(volume.shape) * spacing / coarse).astype(int), 1)
            volume = reduced(volume, shape)
        volume = np.ascontiguousarray(volume, dtype=np.float32)
        grid = coarse if reduce else spacing
        notes: list[str] = []
        if self.locator is not None:
            labels, notes = self._localized(volume, grid, series.hu.shape)
        else:
            if self.cascade if cascade is None else cascade:
                labels = self._cascade(volume, grid)
            else:
                labels = self._predict(volume, grid, self.tile_step_size)
            if reduce:
                labels = nearest_resize(labels, series.hu.shape)
        algorithms: dict[str, Algorithm] = {} if self.localizer is None else dict.fromkeys(STRUCTURES, self.algorithm)
        return Segmentation(np.ascontiguousarray(np.flip(labels, flips)) if flips else labels, self.model, self.device, algorithms, notes=notes)

    @property
    def algorithm(self) -> Algorithm:
        """The model, and the localizer that said where it looked, as the SEG and SR name them."""
        found = model_algorithm(self.model)
        if self.localizer is None:
            return found
        where = f"{found.description} inside the kidneys found by {self.localizer.name}"
        return Algorithm(found.name, found.version, where, f"localizer {self.localizer.name}")

    def locate(self, volume: np.ndarray, spacing: np.ndarray) -> np.ndarray:
        """The localizer's kidneys on ``volume``'s grid: its prediction at its own, coarser spacing, brought back."""
        assert self.locator is not None
        own = np.maximum(spacing, np.array(self.locator.configuration_manager.spacing, float))
        shape = np.maximum(np.round(np.array(volume.shape) * spacing / own).astype(int), 1)
        small = np.ascontiguousarray(reduced(volume, shape), dtype=np.float32) if np.any(shape < volume.shape) else volume
        labels = self.locator.predict_single_npy_array(small[None], {"spacing": [float(v) for v in own]}, None, None, False)
        found = np.asarray(labels) > 0
        return nearest_resize(found, volume.shape) if found.shape != volume.shape else found

    def _localized(self, volume: np.ndarray, spacing: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, list[str]]:
        """Labels on a grid of ``shape`` (the series', of which ``volume`` may be a reduction), and notes on what was
        left out: the localizer finds the kidneys; a component of it that is bone (see :func:`bone_like`) is left
        out; the model runs only in a box around each other one, and keeps only what lies within LOCALIZER_GATE_MM
        of it. Where the localizer finds no kidney-sized component, nothing is predicted: the image shows no kidney."""
        components, sizes = kidney_sized(self.locate(volume, spacing), spacing)
        notes = []
        boxes = ndimage.find_objects(components)
        for number, ml in list(sizes.items()):
            crop = shell_box(boxes[number - 1], volume.shape)
            bone, why = bone_like(volume[crop], components[crop] == number)
            if bone:
                notes.append(f"a {ml:.0f} ml region the localizer took for kidney was left out as bone: {why}")
                log.info("localizer: %s", notes[-1])
                del sizes[number]
        labels = np.zeros(shape, np.uint8)
        if not sizes:
            log.info("localizer: no kidney-sized component")
            return labels, notes
        found = np.isin(components, list(sizes))
        steps = np.maximum(np.round(LOCALIZER_GATE_MM / spacing).astype(int), 1)
        for box in boxes_around(components, list(sizes), spacing):
            probabilities = self._probabilities(np.ascontiguousarray(volume[box]), spacing) * _dilated(found[box], steps)
            target, inside = upsampled(probabilities, box, volume.shape, shape, self._labels_of)
            labels[target] = np.maximum(labels[target], inside)  # boxes merge where they overlap
        return labels, notes

    def _labels_of(self, probabilities: np.ndarray) -> np.ndarray:
        """The model's labels (uint8) for its probabilities (channels first)."""
        return np.asarray(self.predictor.label_manager.convert_probabilities_to_segmentation(probabilities), np.uint8)

    def _predict(self, volume: np.ndarray, spacing: np.ndarray, step: float) -> np.ndarray:
        return np.asarray(self._run(volume, spacing, step, False), dtype=np.uint8)

    def _probabilities(self, volume: np.ndarray, spacing: np.ndarray) -> np.ndarray:
        """The model's probability of each region (channels first) on ``volume``."""
        _, probabilities = self._run(volume, spacing, self.tile_step_size, True)
        return np.asarray(probabilities, np.float32)

    def _run(self, volume: np.ndarray, spacing: np.ndarray, step: float, probabilities: bool) -> Any:
        self.predictor.tile_step_size = step
        return self.predictor.predict_single_npy_array(volume[None], {"spacing": [float(v) for v in spacing]}, None, None, probabilities)

    def _cascade(self, volume: np.ndarray, spacing: np.ndarray) -> np.ndarray:
        """Coarse to fine: the whole volume with tiles that do not overlap (a fraction of the tiles), then the usual
        overlapping tiles over a box with a margin around each of the CASCADE_REFINED largest components it found.
        Every other kidney-sized component keeps its coarse labels, so QC still sees a prediction away from the
        kidneys; smaller coarse specks, artefacts of tiles that do not overlap, are dropped. Where the coarse pass
        finds no kidney-sized component, the whole volume gets the usual pass."""
        coarse = self._predict(volume, spacing, 1.0)
        components, sizes = kidney_sized(coarse > 0, spacing)
        if not sizes:
            log.info("cascade: no kidney-sized component in the coarse pass; segmenting the whole volume")
            return self._predict(volume, spacing, self.tile_step_size)
        labels = np.where(np.isin(components, list(sizes)), coarse, 0).astype(np.uint8)
        refined = sorted(sizes, key=sizes.__getitem__, reverse=True)[:CASCADE_REFINED]
        for box in boxes_around(components, refined, spacing):
            labels[box] = self._predict(np.ascontiguousarray(volume[box]), spacing, self.tile_step_size)
        return labels


#: The cascade refines this many of the largest coarse components: the two kidneys, and one more where a large
#: prediction elsewhere outranks a kidney.
CASCADE_REFINED = 3
#: Margin around each refined component's box for the fine pass, mm.
CASCADE_MARGIN_MM = 30.0


def kidney_sized(mask: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, dict[int, float]]:
    """The mask's connected components, and the ml of each of at least KIDNEY_PART_ML by component number."""
    components, count = ndimage.label(mask)
    ml = np.bincount(components.ravel(), minlength=count + 1)[1:] * float(np.prod(spacing)) / 1000.0
    return components, {int(i) + 1: float(v) for i, v in enumerate(ml) if v >= KIDNEY_PART_ML}


def boxes_around(components: np.ndarray, numbers: list[int], spacing: np.ndarray) -> list[tuple[slice, ...]]:
    """Boxes with a CASCADE_MARGIN_MM margin around the given components; overlapping boxes merged."""
    margin = np.ceil(CASCADE_MARGIN_MM / spacing).astype(int)
    found = ndimage.find_objects(components)
    spans = [[(max(s.start - m, 0), min(s.stop + m, n)) for s, m, n in zip(found[i - 1], margin, components.shape)] for i in numbers]
    merged: list[list[tuple[int, int]]] = []
    for span in spans:
        for other in merged:
            if all(a < d and c < b for (a, b), (c, d) in zip(span, other)):
                other[:] = [(min(a, c), max(b, d)) for (a, b), (c, d) in zip(span, other)]
                break
        else:
            merged.append(span)
    return [tuple(slice(a, b) for a, b in span) for span in merged]


#: The model's labels are kept this far (mm) around the localizer's kidneys.
LOCALIZER_GATE_MM = 10.0


def _dilated(mask: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """``mask`` grown by ``steps`` voxels along each axis (z, y, x), one axis at a time (a box, not a ball)."""
    for axis, n in enumerate(steps):
        mask = ndimage.maximum_filter1d(mask.astype(np.uint8), size=2 * int(n) + 1, axis=axis).astype(bool)
    return mask


#: A series is reduced to the model's spacing before prediction where it is finer by more than this factor.
REDUCE_ABOVE = 1.2


#: The first, most reduced axis is smoothed and resampled in slabs of about this many voxels (8 MiB of float32),
#: REDUCE_THREADS at a time, so that the series is never held whole as float32.
SLAB_VOXELS = 2 * 2**20
UNALIGN_PAD = 16
REDUCE_THREADS = max(1, min(4, len(os.sched_getaffinity(0))))


def reduced(volume: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """``volume`` resampled to ``shape`` (smaller or equal on each axis), smoothed first against aliasing; float32.

    Gaussian smoothing and linear interpolation are separable, so each axis is smoothed and resampled in turn, the
    most reduced first: the same result as smoothing and zooming the whole volume at once, in a third of the time
    for a 1 mm series (the later axes work on an already reduced volume). Each line along an axis is smoothed and
    resampled on its own, so the first axis is done in slabs across another one: the same values, without a float32
    copy of the whole series."""
    factors = np.array(volume.shape) / shape
    axes = [int(a) for a in np.argsort(factors)[::-1] if factors[a] > 1]
    if not axes:
        return np.asarray(volume, np.float32)
    first, across = axes[0], 1 if axes[0] == 0 else 0
    out = np.empty([int(shape[a]) if a == first else n for a, n in enumerate(volume.shape)], np.float32)
    step = max(1, SLAB_VOXELS * volume.shape[across] // volume.size)

    def reduce_slab(start: int) -> None:
        slab = tuple(slice(start, start + step) if a == across else slice(None) for a in range(volume.ndim))
        part = _unaligned(volume[slab])
        out[slab] = _linear_resize(ndimage.gaussian_filter1d(part, (factors[first] - 1) / 2, axis=first), first, int(shape[first]))

    with ThreadPoolExecutor(REDUCE_THREADS) as pool:  # scipy's filters release the GIL
        list(pool.map(reduce_slab, range(0, volume.shape[across], step)))
    for axis in axes[1:]:
        out = _linear_resize(ndimage.gaussian_filter1d(out, (factors[axis] - 1) / 2, axis=axis), axis, int(shape[axis]))
    return out


def _unaligned(part: np.ndarray) -> np.ndarray:
    """``part`` as float32 in a buffer whose last axis is padded: lines along another axis then do not stride by a
    power of two, which made them all compete for the same cache sets (a 64-row slab of a 512 x 512 series filtered
    along its slices took 3 times as long)."""
    view = np.empty((*part.shape[:-1], part.shape[-1] + UNALIGN_PAD), np.float32)[..., : part.shape[-1]]
    view[...] = part
    return view


def _linear_resize(volume: np.ndarray, axis: int, n: int) -> np.ndarray:
    """``volume`` linearly resampled to ``n`` samples along ``axis``, voxel edges aligned and edge values repeated
    (``scipy.ndimage.zoom`` with order 1, ``grid_mode`` and mode "nearest", on one axis)."""
    m = volume.shape[axis]
    return _interpolated(volume, axis, np.clip((np.arange(n) + 0.5) * m / n - 0.5, 0, m - 1))


def upsampled(
    values: np.ndarray, box: tuple[slice, ...], shape: tuple[int, ...], target: tuple[int, ...], to_labels: Callable[[np.ndarray], np.ndarray]
) -> tuple[tuple[slice, ...], np.ndarray]:
    """The labels ``to_labels`` gives for ``values`` (channels first) of ``box`` in a grid of ``shape``, brought
    linearly to the grid of ``target`` shape that covers the same field (voxel edges aligned, as ``reduced`` made
    it): the box on the ``target`` grid, and the labels there (uint8). Beyond the box's outer voxel centres, its edge
    values are repeated. Each axis is interpolated in turn, and after the first in slabs of the target's slices,
    each made labels at once: the same labels as for the whole box brought over, without holding its values at the
    target's resolution."""
    spans, positions = [], []
    for s, m, n in zip(box, shape, target):
        start, stop = (s.start * n) // m, -((-s.stop * n) // m)
        positions.append(np.clip((np.arange(start, stop) + 0.5) * m / n - 0.5 - s.start, 0, s.stop - s.start - 1))
        spans.append(slice(start, stop))
    values = _interpolated(values, 1, positions[0])
    labels = np.empty([len(p) for p in positions], np.uint8)
    step = max(1, SLAB_VOXELS // (values.shape[0] * labels.shape[1] * labels.shape[2]))
    for first in range(0, labels.shape[0], step):
        slab = _interpolated(_interpolated(values[:, first : first + step], 2, positions[1]), 3, positions[2])
        labels[first : first + step] = to_labels(slab)
    return tuple(spans), labels


def _interpolated(values: np.ndarray, axis: int, position: np.ndarray) -> np.ndarray:
    """``values`` linearly interpolated along ``axis`` at fractional indices ``position`` (within the axis)."""
    m = values.shape[axis]
    below = np.minimum(position.astype(int), max(m - 2, 0))
    weight = (position - below).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(values.ndim)])
    return np.take(values, below, axis=axis) * (1 - weight) + np.take(values, np.minimum(below + 1, m - 1), axis=axis) * weight


def nearest_resize(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Labels brought to ``shape`` by nearest neighbour, voxel centres aligned (one axis at a time)."""
    for axis, (n, m) in enumerate(zip(shape, labels.shape)):
        labels = np.take(labels, np.minimum(((np.arange(n) + 0.5) * m / n).astype(int), m - 1), axis=axis)
    return labels
