"""Results saved: each SEG, SR and SC page written atomically into the study's results folder, where delivery finds it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dicomnode.base.files import save_dataset
from dicomnode.options import OutputFormat
from dicomnode.results.write import Results


@dataclass(frozen=True)
class Saved:
    """A result file on disk."""

    output: OutputFormat
    sop_uid: str
    path: Path


def save_results(results: Results, folder: Path) -> list[Saved]:
    """Write SEG, SR and SC pages atomically into ``folder``; returns each file."""
    objects = [(OutputFormat.SEG, results.seg), (OutputFormat.SR, results.sr), *((OutputFormat.SC, ds) for ds in results.sc)]
    saved = []
    for output, ds in objects:
        if ds is None:
            continue
        path = folder / f"{output.value.upper()}_{ds.SOPInstanceUID}.dcm"
        save_dataset(path, ds)
        saved.append(Saved(output, str(ds.SOPInstanceUID), path))
    return saved
