"""Two models' measurements of one series side by side: per structure and side, each one's volume and the Dice
between their masks (shadow mode: the live model against a candidate)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dicomnode.analysis.measure import KidneyMeasurement, Measurements
from dicomnode.renal import SIDES, STRUCTURES, Side, Structure


@dataclass(frozen=True)
class Agreement:
    """One structure of one kidney as the live model and a candidate measured it; a kidney one of them did not find
    counts as 0 ml there, with Dice 0."""

    structure: Structure
    side: Side
    live_ml: float
    candidate_ml: float
    dice: float


def agreement(live: Measurements, candidate: Measurements) -> list[Agreement]:
    """Each structure of each side that either model found a kidney on, in the order of ``SIDES`` and ``STRUCTURES``."""
    found = []
    for side in SIDES:
        ours, theirs = live.kidneys.get(side), candidate.kidneys.get(side)
        if ours is None and theirs is None:
            continue
        for structure in STRUCTURES:
            live_ml = ours.volume(structure) if ours else 0.0
            candidate_ml = theirs.volume(structure) if theirs else 0.0
            found.append(Agreement(structure, side, live_ml, candidate_ml, mask_dice(ours, theirs, structure)))
    return found


def mask_dice(a: KidneyMeasurement | None, b: KidneyMeasurement | None, structure: str) -> float:
    """Dice between two kidneys' masks of ``structure`` on one series grid, counted in the box that holds both (1.0
    where both are empty, 0.0 where one kidney is missing)."""
    if a is None or b is None:
        return 0.0
    if a.shape != b.shape:
        raise ValueError(f"b: measured on a grid of shape {b.shape}, a on {a.shape}")
    union = tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a.box, b.box))

    def placed(kidney: KidneyMeasurement) -> np.ndarray:
        mask = np.zeros(tuple(s.stop - s.start for s in union), bool)
        mask[tuple(slice(s.start - u.start, s.stop - u.start) for s, u in zip(kidney.box, union))] = kidney.mask_in_box(structure)
        return mask

    first, second = placed(a), placed(b)
    total = np.count_nonzero(first) + np.count_nonzero(second)
    return 2 * np.count_nonzero(first & second) / total if total else 1.0
