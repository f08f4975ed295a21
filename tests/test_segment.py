"""The segment stage on a series finer than the model's grid: reduced before prediction, labels back on the
series grid, and the kidneys still measured right against the phantom's truth."""

from __future__ import annotations

import numpy as np
import pytest

from dicomnode.load import LoadedSeries
from dicomnode.measure import measure
from dicomnode.segment import Model, Segmenter, nearest_resize, reduced
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
