"""Semi-real arterial cases: a real CT's kidneys repainted with a known cortex and medulla, the rest of the image kept."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from dicomnode.renal import Side
from tests.peers import SHARED
from training.repaint import read_nifti, repaint_arterial, thick_slices
from training.truth_case import SIDE_CODES

S0009 = SHARED / "data" / "real_ct2" / "s0009"
pytestmark = pytest.mark.skipif(not S0009.exists(), reason="shared real CT s0009 not present")


@pytest.mark.parametrize("confluent", [True, False])
def test_a_repainted_ct_has_arterial_kidneys_whose_truth_is_its_labels(confluent: bool) -> None:
    ct = read_nifti(S0009 / "ct.nii.gz")
    kidneys = {side: sitk.GetArrayFromImage(read_nifti(S0009 / f"kidney_{side.value}.nii.gz")) > 0.5 for side in Side}
    aorta = sitk.GetArrayFromImage(read_nifti(S0009 / "aorta.nii.gz")) > 0.5
    case = repaint_arterial(ct, kidneys, aorta, seed=3, confluent=confluent)
    hu, labels, sides = (sitk.GetArrayFromImage(image) for image in (case.image, case.labels, case.sides))
    before = sitk.GetArrayFromImage(ct)
    anywhere = kidneys[Side.LEFT] | kidneys[Side.RIGHT] | aorta
    assert np.array_equal(hu[~anywhere], before[~anywhere])  # every other voxel is the real image's
    voxel_ml = float(np.prod(ct.GetSpacing())) / 1000.0
    for side, mask in kidneys.items():
        drawn = case.metadata["kidneys"][side.value]
        own = sides == SIDE_CODES[side]
        assert np.array_equal(own, mask) and np.array_equal(labels > 0, kidneys[Side.LEFT] | kidneys[Side.RIGHT])
        cortex, medulla = own & (labels == 2), own & (labels == 1)
        assert case.metadata["truth_ml"][side.value]["cortex"] == pytest.approx(cortex.sum() * voxel_ml, abs=0.01)
        assert 0.3 < cortex.sum() / mask.sum() < 0.95
        assert np.median(hu[cortex]) - np.median(hu[medulla]) == pytest.approx(drawn["cortex_hu"] - drawn["medulla_hu"], abs=15)
    assert np.median(hu[aorta]) > 200
    thick = thick_slices(case)
    assert thick.image.GetSpacing()[2] == 5.0 and thick.image.GetSize()[2] == int(185 * 1.5 // 5)
