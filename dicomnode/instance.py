"""A received instance as the node records it: what every stage that reads a study's files is given."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Instance:
    """One received, stored instance."""

    seq: int
    sop_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    path: Path
