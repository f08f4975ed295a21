"""CT numbers from stored pixel values (PS3.3 C.11.1.1.2: HU = stored x RescaleSlope + RescaleIntercept), one rule
for every stage that reads pixels."""

from __future__ import annotations

import math

import numpy as np
import pydicom


def rescale(ds: pydicom.Dataset) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept of a slice (1 and 0 where absent); ValueError, naming the attribute, where
    a value is not a finite number or the slope is 0 (every pixel would read as the intercept)."""
    values = []
    for keyword, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        raw = ds.get(keyword)
        try:
            value = default if raw is None or raw == "" else float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{keyword} {raw!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"{keyword} {raw!r} is not a finite number")
        values.append(value)
    if values[0] == 0:
        raise ValueError("RescaleSlope 0: every pixel would have the value of RescaleIntercept")
    return values[0], values[1]


def to_hu(ds: pydicom.Dataset, pixels: np.ndarray) -> np.ndarray:
    """``pixels`` of ``ds`` in HU, as float32."""
    slope, intercept = rescale(ds)
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
