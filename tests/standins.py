"""Stand-ins for the model where a test must know every mask in advance: the segmenter returns the phantom's truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dicomnode.imaging.load import LoadedSeries
from dicomnode.segment.model import Model, Segmentation, TissueLabel
from training.phantom_dicom import SeriesFiles
from training.phantoms import Label


class PhantomLabels:
    """A stand-in segmenter that returns the phantom's true cortex and medulla."""

    model = Model("phantom-labels", Path("."), {"version": "test"}, "0")

    def __init__(self, series: SeriesFiles) -> None:
        self.truth = series.phantom.labels

    def segment(self, series: LoadedSeries) -> Segmentation:
        labels = np.zeros(self.truth.shape, np.uint8)
        labels[self.truth == Label.CORTEX] = TissueLabel.CORTEX
        labels[self.truth == Label.MEDULLA] = TissueLabel.MEDULLA
        return Segmentation(labels, self.model, "cpu")
