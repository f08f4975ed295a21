"""Volumes, sides and flags from a labelled volume (the phantom's ground truth as the prediction)."""

from __future__ import annotations

import numpy as np
import pytest

from dicomnode.load import LoadedSeries
from dicomnode.measure import measure
from dicomnode.segment import CORTEX, MEDULLA, Model, Segmentation
from training.phantoms import Grid, Label, Phase, make_phantom

MODEL = Model("truth", None, {}, "0")


def _series_and_truth(seed: int):
    phantom = make_phantom(seed, grid=Grid.centred(96, 3.6, 30, 6.0))
    grid = phantom.grid
    series = LoadedSeries([], phantom.image.astype(np.float32), np.array(grid.origin), np.array(grid.spacing), np.eye(3))
    labels = np.zeros_like(phantom.labels)
    labels[phantom.labels == Label.MEDULLA] = MEDULLA
    labels[phantom.labels == Label.CORTEX] = CORTEX
    return phantom, series, labels


def test_volumes_and_sides_match_ground_truth() -> None:
    phantom, series, labels = _series_and_truth(21)
    result = measure(series, Segmentation(labels, MODEL, "cpu"))
    assert set(result.kidneys) == {"left", "right"}
    for side in ("left", "right"):
        for structure in ("parenchyma", "cortex", "medulla"):
            assert result.kidneys[side].volume(structure) == pytest.approx(phantom.volumes_ml[f"{structure}_{side}"], rel=1e-6)
    assert result.left_split == pytest.approx(phantom.volumes_ml["parenchyma_left"] / (phantom.volumes_ml["parenchyma_left"] + phantom.volumes_ml["parenchyma_right"]))
    assert result.flags == []


def test_kidneys_without_corticomedullary_differentiation_are_flagged() -> None:
    phantom = make_phantom(24, Phase.NEPHROGRAPHIC, grid=Grid.centred(96, 3.6, 30, 6.0))
    grid = phantom.grid
    series = LoadedSeries([], phantom.image.astype(np.float32), np.array(grid.origin), np.array(grid.spacing), np.eye(3))
    labels = np.zeros_like(phantom.labels)
    labels[phantom.labels == Label.MEDULLA] = MEDULLA
    labels[phantom.labels == Label.CORTEX] = CORTEX
    result = measure(series, Segmentation(labels, MODEL, "cpu"))
    assert sum("no corticomedullary differentiation" in flag for flag in result.flags) == 2


def test_missing_kidney_and_specks_are_flagged_and_ignored() -> None:
    phantom, series, labels = _series_and_truth(22)
    x = series.patient_x()
    labels[np.broadcast_to(x <= 0, labels.shape)] = 0  # remove the right kidney
    labels[0, 0, 0] = CORTEX  # a one-voxel speck
    result = measure(series, Segmentation(labels, MODEL, "cpu"))
    assert set(result.kidneys) == {"left"}
    assert "no right kidney found" in result.flags
    assert result.kidneys["left"].parenchyma_ml == pytest.approx(phantom.volumes_ml["parenchyma_left"], rel=1e-6)


def test_no_kidney() -> None:
    _, series, labels = _series_and_truth(23)
    result = measure(series, Segmentation(np.zeros_like(labels), MODEL, "cpu"))
    assert result.kidneys == {} and result.flags == ["no kidney found"]
