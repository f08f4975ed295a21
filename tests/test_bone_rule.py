"""The localizer's bone rule (``anatomy.bone_like``): a region that is dense and not wrapped in fat is bone, whatever
its mean HU; a kidney is not, in any phase, nor where an organ leaves it little fat around it."""

from __future__ import annotations

import numpy as np
import pytest

from dicomnode.imaging.tissue import bone_like

SHAPE = (40, 40, 40)


def _ball(radius: float, centre: tuple[float, float, float] = (20, 20, 20)) -> np.ndarray:
    z, y, x = np.indices(SHAPE)
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2


def _image(background: float, inside: np.ndarray, values: list[tuple[float, np.ndarray]], seed: int) -> np.ndarray:
    """``background`` with each (value, region) painted inside ``inside`` in turn, and CT noise."""
    hu = np.full(SHAPE, background, np.float32)
    for value, where in values:
        hu[where & inside] = value
    return hu + np.random.default_rng(seed).normal(0, 15, SHAPE).astype(np.float32)


KIDNEY = _ball(12)
MEDULLA = _ball(8)
PELVIS = _ball(4.5)


def _kidney(cortex: float, medulla: float, pelvis: float, fat: float, organ_share: float = 0.0) -> np.ndarray:
    """A kidney in perirenal fat; ``organ_share`` of the image's columns (one side) is an organ at 60 HU instead."""
    hu = _image(fat, KIDNEY, [(cortex, KIDNEY), (medulla, MEDULLA), (pelvis, PELVIS)], 1)
    organ = np.zeros(SHAPE, bool)
    organ[:, :, : int(organ_share * SHAPE[2])] = True
    hu[organ & ~KIDNEY] = 60.0
    return hu


@pytest.mark.parametrize(
    "phase, hu",
    [
        ("non-contrast", _kidney(35, 30, 30, -90)),
        ("corticomedullary, very bright cortex", _kidney(290, 90, 90, -90)),
        ("corticomedullary, against the spleen", _kidney(230, 90, 90, -90, organ_share=0.6)),
        ("excreted contrast in the pelvis", _kidney(160, 150, 1200, -90)),
        ("against the liver, little fat", _kidney(35, 30, 30, -90, organ_share=0.6)),
    ],
)
def test_a_kidney_is_not_bone_in_any_phase(phase: str, hu: np.ndarray) -> None:
    bone, why = bone_like(hu, KIDNEY)
    assert not bone, (phase, why)


def test_dense_bone_in_muscle_is_bone_and_the_reason_says_why() -> None:
    cancellous = _ball(12)
    # marrow and cancellous bone (mean about 150 HU, inside a kidney's range) under a 700 HU cortical rim, in muscle
    hu = _image(50, cancellous, [(700, cancellous), (140, _ball(10))], 2)
    bone, why = bone_like(hu, cancellous)
    assert bone and "above 300 HU" in why and "fat" in why, why


def test_a_dense_region_wrapped_in_fat_is_not_called_bone() -> None:
    # a kidney whose calyces hold excreted contrast is dense in a larger share than bone can be told from; fat decides
    hu = _kidney(160, 150, 1200, -90)
    hu[_ball(7) & ~PELVIS] = 900
    bone, why = bone_like(hu, KIDNEY)
    assert not bone, why
