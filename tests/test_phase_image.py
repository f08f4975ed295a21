"""The image check of the contrast phase: the aorta is found by shape and place, not taken from bone or bowel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from dicomnode.imaging.aorta import ImagePhase, aorta_evidence
from tests.peers import REAL_CT as REAL
from training.phantom_dicom import to_sitk, write_study
from training.phantoms import Grid, Label, Phase, make_phantom
from training.volume_dicom import SeriesTags, write_volume_series

needs_real = pytest.mark.skipif(not REAL.exists(), reason="shared real CT not present")
GRID = Grid.centred(160, 2.2, 30, 5.0)


def test_phantom_phases(tmp_path: Path) -> None:
    study = write_study(61, tmp_path, phases=tuple(Phase), grid=GRID)
    found = {s.phantom.phase: aorta_evidence(s.files) for s in study.series}
    assert found[Phase.ARTERIAL].phase is ImagePhase.ARTERIAL
    assert found[Phase.NONCONTRAST].phase is ImagePhase.UNENHANCED
    assert found[Phase.NEPHROGRAPHIC].phase is ImagePhase.ENHANCED
    assert found[Phase.ARTERIAL].hu == pytest.approx(280, abs=40)
    assert found[Phase.NONCONTRAST].hu == pytest.approx(40, abs=20)


def test_dense_spine_and_bright_bowel_are_not_taken_for_the_aorta(tmp_path: Path) -> None:
    phantom = make_phantom(62, Phase.NONCONTRAST, grid=GRID)
    image = phantom.image.astype(np.float32)
    image[phantom.labels == Label.SPINE] = 700.0  # dense vertebra, directly behind the aorta
    z, y, x = np.ogrid[: GRID.shape[0], : GRID.shape[1], : GRID.shape[2]]
    cx, cy = (np.array([-10.0, -60.0]) - np.array(GRID.origin[:2])) / np.array(GRID.spacing[:2])
    loop = ((x - cx) / 12) ** 2 + ((y - cy) / 5) ** 2 <= 1  # a bowel loop with oral contrast in front of the aorta
    image[np.broadcast_to(loop, image.shape)] = 450.0
    files = write_volume_series(to_sitk(image, GRID), tmp_path / "s", SeriesTags(description="Abdomen"))
    evidence = aorta_evidence(files)
    assert evidence.phase is ImagePhase.UNENHANCED, evidence
    assert evidence.hu is not None and evidence.hu < 100


def test_no_vertebra_no_evidence(tmp_path: Path) -> None:
    phantom = make_phantom(63, Phase.ARTERIAL, grid=GRID)
    image = phantom.image.astype(np.float32)
    image[phantom.labels > Label.BODY] = -90.0  # only fat and muscle: nothing to find
    files = write_volume_series(to_sitk(image, GRID), tmp_path / "s", SeriesTags(description="Abdomen"))
    assert aorta_evidence(files).phase is ImagePhase.UNKNOWN


@needs_real
def test_real_non_contrast_ct_is_called_unenhanced(tmp_path: Path) -> None:
    files = write_volume_series(sitk.ReadImage(str(REAL / "example_ct.nii.gz")), tmp_path / "s")
    evidence = aorta_evidence(files)
    assert evidence.phase is ImagePhase.UNENHANCED, evidence
    assert evidence.hu is None or evidence.hu < 100  # the aorta is about 41 HU; bone (374 HU) was measured before


@needs_real
def test_real_portal_venous_ct_is_not_called_arterial() -> None:
    evidence = aorta_evidence(sorted((REAL / "example_ct_dicom").iterdir()))
    assert evidence.phase is ImagePhase.ENHANCED, evidence
    assert 120 <= evidence.hu < 200
