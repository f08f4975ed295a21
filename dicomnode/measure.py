"""Measure stage: clean the prediction, split left/right, and compute renal volumes and sanity flags."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from dicomnode.load import LoadedSeries
from dicomnode.segment import CORTEX, MEDULLA, Segmentation

STRUCTURES = ("parenchyma", "cortex", "medulla")
SIDES = ("left", "right")
MIN_KIDNEY_ML = 10.0
#: Cortex minus medulla (HU) below which a kidney shows no corticomedullary differentiation.
MIN_CORTICOMEDULLARY_HU = 15.0


@dataclass(frozen=True)
class KidneyMeasurement:
    """Volumes (ml) of one kidney and its masks on the series grid."""

    side: str
    parenchyma_ml: float
    cortex_ml: float
    medulla_ml: float
    cortex: np.ndarray
    medulla: np.ndarray
    cortex_hu: float
    medulla_hu: float

    @property
    def parenchyma(self) -> np.ndarray:
        return self.cortex | self.medulla

    def volume(self, structure: str) -> float:
        return {"parenchyma": self.parenchyma_ml, "cortex": self.cortex_ml, "medulla": self.medulla_ml}[structure]

    def mask(self, structure: str) -> np.ndarray:
        return {"parenchyma": self.parenchyma, "cortex": self.cortex, "medulla": self.medulla}[structure]


@dataclass(frozen=True)
class Measurements:
    """Per-side volumes, totals, ratios and the flags a reader should see."""

    kidneys: dict[str, KidneyMeasurement]
    flags: list[str] = field(default_factory=list)

    @property
    def total_parenchyma_ml(self) -> float:
        return sum(k.parenchyma_ml for k in self.kidneys.values())

    @property
    def cortex_ratio(self) -> float | None:
        total = self.total_parenchyma_ml
        return sum(k.cortex_ml for k in self.kidneys.values()) / total if total else None

    @property
    def left_split(self) -> float | None:
        """Left share of total parenchyma (split renal volume)."""
        total = self.total_parenchyma_ml
        return self.kidneys["left"].parenchyma_ml / total if total and "left" in self.kidneys else None

    def summary(self) -> dict[str, float | None | list[str]]:
        """Plain figures for the job record."""
        figures: dict[str, float | None | list[str]] = {
            f"{structure}_{side}_ml": round(k.volume(structure), 2) for side, k in self.kidneys.items() for structure in STRUCTURES
        }
        for side, k in self.kidneys.items():
            figures.update({f"cortex_{side}_hu": round(k.cortex_hu, 1), f"medulla_{side}_hu": round(k.medulla_hu, 1)})
        figures.update(
            total_parenchyma_ml=round(self.total_parenchyma_ml, 2),
            cortex_ratio=None if self.cortex_ratio is None else round(self.cortex_ratio, 4),
            left_split=None if self.left_split is None else round(self.left_split, 4),
            flags=self.flags,
        )
        return figures


def measure(series: LoadedSeries, segmentation: Segmentation) -> Measurements:
    """Keep the two largest kidney-sized components, assign sides by patient x, and measure."""
    labels = segmentation.labels
    parenchyma = labels > 0
    components, count = ndimage.label(parenchyma, structure=np.ones((3, 3, 3), bool))
    flags: list[str] = []
    if count == 0:
        return Measurements({}, ["no kidney found"])
    sizes = ndimage.sum_labels(parenchyma, components, index=np.arange(1, count + 1))
    kept = [int(i) + 1 for i in np.argsort(sizes)[::-1][:2] if sizes[i] * series.voxel_ml >= MIN_KIDNEY_ML]
    patient_x = series.patient_x()
    kidneys: dict[str, KidneyMeasurement] = {}
    for component in kept:
        mask = components == component
        centre_x = float(np.broadcast_to(patient_x, mask.shape)[mask].mean())
        side = "left" if centre_x > 0 else "right"  # LPS: +x is the patient's left
        if side in kidneys:
            flags.append(f"two kidney-sized components on the {side} side; the smaller one was ignored")
            continue
        cortex, medulla = mask & (labels == CORTEX), mask & (labels == MEDULLA)
        cortex_hu = float(series.hu[cortex].mean()) if cortex.any() else float("nan")
        medulla_hu = float(series.hu[medulla].mean()) if medulla.any() else float("nan")
        kidneys[side] = KidneyMeasurement(
            side,
            float(mask.sum() * series.voxel_ml),
            float(cortex.sum() * series.voxel_ml),
            float(medulla.sum() * series.voxel_ml),
            cortex,
            medulla,
            cortex_hu,
            medulla_hu,
        )
        if not cortex_hu - medulla_hu >= MIN_CORTICOMEDULLARY_HU:
            flags.append(
                f"{side} kidney: cortex {cortex_hu:.0f} HU, medulla {medulla_hu:.0f} HU: no corticomedullary "
                "differentiation, the series may not be arterial phase"
            )
        if _touches_edge(mask):
            flags.append(f"{side} kidney touches the edge of the field of view: it may be cut off")
        share = cortex.sum() / mask.sum()
        if not 0.2 <= share <= 0.9:
            flags.append(f"{side} kidney cortex is {share:.0%} of parenchyma, outside the plausible 20-90 %")
    for side in SIDES:
        if side not in kidneys:
            flags.append(f"no {side} kidney found")
    return Measurements(kidneys, flags)


def _touches_edge(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any() or mask[:, :, 0].any() or mask[:, :, -1].any())
