"""The sides and tissue groups that the modules of :mod:`training.synth` paint and look for."""

from __future__ import annotations

from training.synth_anatomy import Tissue

RIGHT, LEFT = ("right", "left")
CORTEX = {RIGHT: Tissue.CORTEX_RIGHT, LEFT: Tissue.CORTEX_LEFT}
MEDULLA = {RIGHT: Tissue.MEDULLA_RIGHT, LEFT: Tissue.MEDULLA_LEFT}
KIDNEY_TISSUES = (*CORTEX.values(), *MEDULLA.values())
BONES = (Tissue.BONE, Tissue.VERTEBRA, Tissue.RIB)
