"""The model's own uncertainty of a volume: how much it changes between a confident and a permissive threshold of
the model's probabilities, around the 0.5 its labels are drawn at."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dicomnode.renal import Structure

#: Probability thresholds (region channels: parenchyma, cortex) whose volumes bound a volume's range: above the first
#: the model is confident, above the second it does not rule the voxel out. Labels are drawn above 0.5.
BAND_THRESHOLDS = (0.75, 0.25)
LABEL_THRESHOLD = 0.5
#: How the range is named in the SR and on the summary page.
BAND_METHOD = (
    f"volume range: where the model's probability is above {BAND_THRESHOLDS[0]} (minimum) and above {BAND_THRESHOLDS[1]} (maximum), "
    f"the volume reported above {LABEL_THRESHOLD}"
)


@dataclass(frozen=True)
class VolumeBand:
    """In one box of the series grid (a kidney's, as the localizer found it), each structure's volume above each of
    BAND_THRESHOLDS as a ratio of its volume above LABEL_THRESHOLD: (minimum, maximum)."""

    box: tuple[slice, ...]
    ratios: dict[Structure, tuple[float, float]]

    def holds(self, index: tuple[int, ...]) -> bool:
        return all(s.start <= i < s.stop for s, i in zip(self.box, index))

    def flipped(self, axes: tuple[int, ...], shape: tuple[int, ...]) -> VolumeBand:
        """The band with its box mirrored along ``axes`` of a grid of ``shape``."""
        box = tuple(slice(n - s.stop, n - s.start) if a in axes else s for a, (s, n) in enumerate(zip(self.box, shape)))
        return VolumeBand(box, self.ratios)


def band_of(probabilities: np.ndarray, box: tuple[slice, ...]) -> VolumeBand:
    """The band of a box's region probabilities (channels first: parenchyma, cortex, as the project's region-based
    models give them); medulla is parenchyma without cortex, its minimum where both are confident."""
    parenchyma, cortex = probabilities[0], probabilities[1]
    confident, permissive = BAND_THRESHOLDS

    def counts(par: float, cor_min: float, cor_max: float) -> tuple[float, float, float]:
        return (
            float(np.count_nonzero(parenchyma > par)),
            float(np.count_nonzero(cortex > cor_min)),
            float(np.count_nonzero((parenchyma > par) & (cortex <= cor_max))),
        )

    reported = counts(LABEL_THRESHOLD, LABEL_THRESHOLD, LABEL_THRESHOLD)
    low = counts(confident, confident, permissive)
    high = counts(permissive, permissive, confident)
    ratios = {
        structure: (low[n] / reported[n], high[n] / reported[n])
        for n, structure in enumerate((Structure.PARENCHYMA, Structure.CORTEX, Structure.MEDULLA))
        if reported[n]
    }
    return VolumeBand(box, ratios)
