"""Kidney masks are kept inside each kidney's box; what the SEG and the SR carry must be exactly those masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dicomnode.analysis.measure import measure
from dicomnode.analysis.plan import ReportPlan
from dicomnode.analysis.qc import check
from dicomnode.config import QCConfig
from dicomnode.imaging.aorta import ImagePhase
from dicomnode.imaging.load import load_series
from dicomnode.renal import SIDES, STRUCTURES
from dicomnode.results.write import write_results
from dicomnode.segment.model import Model, Segmentation, TissueLabel
from tests.readback import seg_masks, sr_groups
from training.phantom_dicom import write_study
from training.phantoms import Grid, Label, Phase

MODEL = Model("truth", None, {}, "0")


@pytest.mark.parametrize("feet_first", [False, True])
def test_seg_frames_and_sr_volumes_equal_the_measured_masks(tmp_path: Path, feet_first: bool) -> None:
    files = write_study(31, tmp_path / "study", phases=(Phase.ARTERIAL,), grid=Grid.centred(64, 5.4, 24, 6.0)).series[0]
    series = load_series(list(files.files))
    phantom = files.phantom
    truth = phantom.labels
    labels = np.zeros(truth.shape, np.uint8)
    labels[truth == Label.MEDULLA], labels[truth == Label.CORTEX] = TissueLabel.MEDULLA, TissueLabel.CORTEX
    if feet_first:  # the same study, slices stored head to feet: the boxes and slice positions must follow
        series.hu, series.datasets, labels = np.ascontiguousarray(series.hu[::-1]), series.datasets[::-1], np.ascontiguousarray(labels[::-1])
        series.origin, series.direction = series.to_patient(np.array([truth.shape[0] - 1, 0, 0])), series.direction * [1, 1, -1]
    measurements = measure(series, Segmentation(labels, MODEL, "cpu"))
    assert set(measurements.kidneys) == {"left", "right"}
    report = check(measurements, ImagePhase.ARTERIAL, QCConfig())
    # every structure of both sides, whatever QC says of this small phantom
    everything = ReportPlan(tuple((s, side) for s in STRUCTURES for side in SIDES), (), not report.passed, report.verdict)
    results = write_results(series, measurements, report, everything, MODEL)
    assert results.seg is not None
    results.seg.save_as(tmp_path / "seg.dcm")
    masks = seg_masks(tmp_path / "seg.dcm", [str(ds.SOPInstanceUID) for ds in series.datasets])
    names = {int(s.SegmentNumber): s.SegmentLabel.lower().split(" renal ") for s in results.seg.SegmentSequence}
    assert sorted(names.values()) == sorted([side, structure] for side in ("left", "right") for structure in STRUCTURES)
    for number, (side, structure) in names.items():
        kidney = measurements.kidneys[side]
        assert np.array_equal(masks[number], kidney.mask(structure)), (side, structure)
        drawn = labels > 0 if structure == "parenchyma" else labels == {"cortex": TissueLabel.CORTEX, "medulla": TissueLabel.MEDULLA}[structure]
        assert np.array_equal(masks[number], drawn & kidney.parenchyma), (side, structure)
        assert masks[number].sum() * series.voxel_ml == pytest.approx(kidney.volume(structure), abs=1e-6)
        k = int(np.argmax(masks[number].sum(axis=(1, 2))))
        assert np.array_equal(kidney.slice_mask(structure, k), masks[number][k])
    for group in (g for g in sr_groups(results.sr) if g.segment_number):
        side, _, structure = group.identifier.split(" ")
        assert group.volume_ml == pytest.approx(round(measurements.kidneys[side].volume(structure), 3))
