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
    """Write each result object atomically into ``folder`` as ``<FORMAT>_<SOP Instance UID>.dcm``; returns each file."""
    saved = []
    for output, ds in ((output, ds) for output, objects in results.objects.items() for ds in objects):
        path = folder / f"{output.value.upper()}_{ds.SOPInstanceUID}.dcm"
        save_dataset(path, ds)
        saved.append(Saved(output, str(ds.SOPInstanceUID), path))
    return saved
