"""The renal structures the node measures and the sides it measures them on, as every stage names them."""

from __future__ import annotations

import enum


class Side(enum.StrEnum):
    """The patient's side of a kidney (LPS: +x is the patient's left)."""

    LEFT = "left"
    RIGHT = "right"


class Structure(enum.StrEnum):
    """What is measured of a kidney: the parenchyma, and its cortex and medulla."""

    PARENCHYMA = "parenchyma"
    CORTEX = "cortex"
    MEDULLA = "medulla"


SIDES = (Side.LEFT, Side.RIGHT)
STRUCTURES = (Structure.PARENCHYMA, Structure.CORTEX, Structure.MEDULLA)
