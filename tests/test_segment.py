"""The segment stage on a series finer than the model's grid: reduced before prediction, labels back on the
series grid, and the kidneys still measured right against the phantom's truth; ONNX Runtime on the CPU gives the
labels torch gives."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from dicomnode.analysis.measure import measure
from dicomnode.config import ModelConfig
from dicomnode.imaging.load import LoadedSeries
from dicomnode.options import Runtime
from dicomnode.segment.model import Model
from dicomnode.segment.onnx_network import OnnxNetwork
from dicomnode.segment.resample import nearest_resize, reduced
from dicomnode.segment.segmenter import Segmenter, uses_onnxruntime
from tests.peers import REPO
from tests.readback import dice
from training.phantoms import Grid, make_phantom

pytestmark = pytest.mark.slow


def test_reduce_and_nearest_resize_keep_the_grid() -> None:
    volume = np.random.default_rng(0).normal(size=(60, 90, 90)).astype(np.float32)
    small = reduced(volume, np.array([12, 45, 45]))
    assert small.shape == (12, 45, 45)
    labels = (np.arange(12 * 45 * 45).reshape(12, 45, 45) % 3).astype(np.uint8)
    big = nearest_resize(labels, (60, 90, 90))
    assert big.shape == (60, 90, 90) and np.array_equal(big[::5, ::2, ::2], labels)


def test_reduce_axis_by_axis_equals_smoothing_and_zooming_at_once() -> None:
    volume = np.random.default_rng(1).normal(0, 100, size=(53, 77, 64)).astype(np.float32)
    shape = np.array([11, 35, 64])  # factors 4.8, 2.2 and 1 (left alone)
    sigma = np.maximum(np.array(volume.shape) / shape - 1, 0) / 2
    at_once = ndimage.zoom(ndimage.gaussian_filter(volume, sigma), shape / np.array(volume.shape), order=1, grid_mode=True, mode="nearest")
    assert np.abs(reduced(volume, shape) - at_once).max() < 1e-3


def test_thin_slices_are_segmented_on_the_models_grid_and_measured_on_theirs() -> None:
    grid = Grid.centred(320, 0.8, 60, 2.5)  # 0.8 mm pixels, 2.5 mm slices: twice as fine as the model on each axis
    phantom = make_phantom(4243, grid=grid, ckd_stage=0)
    series = LoadedSeries([], phantom.image.astype(np.float32), np.array(grid.origin), np.array(grid.spacing), np.eye(3))
    model = Model.from_folder(REPO / "models" / "renal-phantom-cpu")
    segmentation = Segmenter(model, "cpu").segment(series)
    assert segmentation.labels.shape == phantom.image.shape
    result = measure(series, segmentation)
    for side in ("left", "right"):
        truth = phantom.kidney_mask(side, "parenchyma")
        assert dice(result.kidneys[side].parenchyma, truth) > 0.85, side
        assert result.kidneys[side].parenchyma_ml == pytest.approx(phantom.volumes_ml[f"parenchyma_{side}"], rel=0.10), side


def test_onnxruntime_gives_the_same_labels_as_torch() -> None:
    grid = Grid.centred(224, 1.6, 36, 5.0)
    phantom = make_phantom(4244, grid=grid, ckd_stage=1)
    crop = (slice(0, 36), slice(40, 184), slice(40, 136))  # the patient's right half with one kidney: 16 tiles
    hu = np.ascontiguousarray(phantom.image[crop], dtype=np.float32)
    series = LoadedSeries([], hu, np.array(grid.origin), np.array(grid.spacing), np.eye(3))
    model = Model.from_folder(REPO / "models" / "renal-synth-cpu")
    by_torch = Segmenter(model, "cpu", cascade=False, runtime=Runtime.TORCH)
    by_onnx = Segmenter(model, "cpu", cascade=False, runtime=Runtime.AUTO)  # the CPU's default
    assert (by_torch.runtime, by_onnx.runtime) == (Runtime.TORCH, Runtime.ONNXRUNTIME)
    assert isinstance(by_onnx.predictor.network, OnnxNetwork)
    torch_labels, onnx_labels = by_torch.segment(series).labels, by_onnx.segment(series).labels
    assert (torch_labels > 0).sum() * np.prod(grid.spacing) / 1000 > 60  # a kidney (ml) was found: the comparison means something
    assert np.array_equal(torch_labels, onnx_labels)


def test_onnx_network_follows_the_weights_nnunet_loads() -> None:
    torch = pytest.importorskip("torch")
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1), torch.nn.InstanceNorm3d(2))
    first = {k: v.clone() for k, v in network.state_dict().items()}
    onnx = OnnxNetwork(network, first, (8, 16, 16), 1, 1)
    tiles = torch.randn(2, 1, 8, 16, 16)  # a batch of two: the batch axis is not fixed
    assert torch.allclose(onnx(tiles), network(tiles), atol=1e-4)
    onnx.load_state_dict(first)  # the same weights: no new export
    second = {k: v + 0.5 for k, v in first.items()}
    onnx.load_state_dict(second)  # another fold's weights: exported again
    assert torch.allclose(onnx(tiles), network(tiles), atol=1e-4) and torch.allclose(network.state_dict()["0.bias"], second["0.bias"])


def test_onnxruntime_is_refused_on_cuda() -> None:
    with pytest.raises(ValueError, match="runtime: onnxruntime runs on the CPU only"):
        uses_onnxruntime(Runtime.ONNXRUNTIME, "cuda")
    assert not uses_onnxruntime(Runtime.AUTO, "cuda") and uses_onnxruntime(Runtime.AUTO, "cpu")
    with pytest.raises(ValueError, match="runtime: onnxruntime runs on the CPU only; the device is cuda"):
        ModelConfig(device="cuda", runtime=Runtime.ONNXRUNTIME)
