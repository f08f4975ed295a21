"""Segment stage: nnU-Net v2 prediction of renal parenchyma and cortex, the model loaded once and kept warm."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from dicomnode.imaging.axes import canonical_flips
from dicomnode.imaging.load import LoadedSeries
from dicomnode.imaging.tissue import bone_like, shell_box
from dicomnode.options import Runtime
from dicomnode.renal import STRUCTURES
from dicomnode.renal_limits import KIDNEY_PART_ML
from dicomnode.segment.band import VolumeBand, band_of
from dicomnode.segment.model import Algorithm, Model, Segmentation, model_algorithm
from dicomnode.segment.resample import nearest_resize, reduced, upsampled

log = logging.getLogger(__name__)

#: Where the project's nnU-Net trainers live; nnU-Net finds the trainer a checkpoint names there.
TRAINERS_DIR = Path(__file__).resolve().parent / "nnunet_trainers"
#: A series is reduced to the model's spacing before prediction where it is finer by more than this factor.
REDUCE_ABOVE = 1.2


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
        bands: list[VolumeBand] = []
        if self.locator is not None:
            labels, notes, bands = self._localized(volume, grid, series.hu.shape)
        else:
            if self.cascade if cascade is None else cascade:
                labels = self._cascade(volume, grid)
            else:
                labels = self._predict(volume, grid, self.tile_step_size)
            if reduce:
                labels = nearest_resize(labels, series.hu.shape)
        algorithms: dict[str, Algorithm] = {} if self.localizer is None else dict.fromkeys(STRUCTURES, self.algorithm)
        if flips:
            labels, bands = np.ascontiguousarray(np.flip(labels, flips)), [b.flipped(tuple(flips), series.hu.shape) for b in bands]
        return Segmentation(labels, self.model, self.device, algorithms, notes=notes, bands=tuple(bands))

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

    def _localized(self, volume: np.ndarray, spacing: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, list[str], list[VolumeBand]]:
        """Labels on a grid of ``shape`` (the series', of which ``volume`` may be a reduction), notes on what was
        left out, and each box's band of volumes (:func:`band_of`): the localizer finds the kidneys; a component of
        it that is bone (see :func:`bone_like`) is left out; the model runs only in a box around each other one,
        and keeps only what lies within LOCALIZER_GATE_MM of it. Where the localizer finds no kidney-sized
        component, nothing is predicted: the image shows no kidney."""
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
        bands: list[VolumeBand] = []
        if not sizes:
            log.info("localizer: no kidney-sized component")
            return labels, notes, bands
        found = np.isin(components, list(sizes))
        steps = np.maximum(np.round(LOCALIZER_GATE_MM / spacing).astype(int), 1)
        for box in boxes_around(components, list(sizes), spacing):
            probabilities = self._probabilities(np.ascontiguousarray(volume[box]), spacing) * _dilated(found[box], steps)
            target, inside = upsampled(probabilities, box, volume.shape, shape, self._labels_of)
            labels[target] = np.maximum(labels[target], inside)  # boxes merge where they overlap
            if self.predictor.label_manager.has_regions and probabilities.shape[0] == 2:
                bands.append(band_of(probabilities, target))
        return labels, notes, bands

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
