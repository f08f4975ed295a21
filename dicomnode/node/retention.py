"""Retention: delete received instances and results of finished studies, by age and under disk pressure.

Only studies whose every job is done and whose every result was confirmed by every destination (or had nothing to
send) are deleted; a queued or parked delivery, a job not done, or instances not yet processed keep a study whole.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from dicomnode.base.files import free_mb
from dicomnode.config import Retention
from dicomnode.store import FinishedStudy, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Purged:
    """One study deleted by the cleaner, and why."""

    study_uid: str
    instances: int
    reason: str


def clean(
    store: Store,
    storage: Path,
    results: Path,
    policy: Retention,
    busy: Collection[str] = (),
    now: float | None = None,
    free: Callable[[Path], float] = free_mb,
) -> list[Purged]:
    """Delete finished studies last active more than ``policy.days`` ago, then, while ``storage`` has less than
    ``policy.free_disk_mb`` free, the least recently active finished studies. Studies in ``busy`` (an association
    is sending to them) are left alone."""
    now = store.now() if now is None else now
    purged = []
    candidates = [s for s in store.finished_studies() if s.study_uid not in busy]
    for study in candidates:
        age_days = (now - study.last_activity) / 86400
        if policy.days > 0 and age_days > policy.days:
            reason = f"retention: last activity {age_days:.1f} days ago, over retention.days={policy.days:g}"
        elif (space := free(storage)) < policy.free_disk_mb:
            reason = f"disk pressure: {space:.0f} MiB free, below retention.free_disk_mb={policy.free_disk_mb}"
        else:
            continue  # candidates are oldest first: the rest are younger, and there is space
        count = store.purge_study(study, reason, _deleter(study, storage, results))
        if count:
            log.info("deleted study %s (%d instances and its results): %s", study.study_uid, count, reason)
            purged.append(Purged(study.study_uid, count, reason))
    return purged


def _deleter(study: FinishedStudy, storage: Path, results: Path) -> Callable[[list[Path], tuple[int, ...]], None]:
    def delete(paths: list[Path], versions: tuple[int, ...]) -> None:
        for path in paths:
            path.unlink(missing_ok=True)
        for folder in {p.parent for p in paths}:
            _remove_empty(folder, storage)
        for version in versions:
            shutil.rmtree(results / study.study_uid / f"v{version}", ignore_errors=True)
        _remove_empty(results / study.study_uid, results)

    return delete


def _remove_empty(folder: Path, root: Path) -> None:
    """Remove ``folder`` and its parents up to (not including) ``root`` while they are empty."""
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty (or already gone)
            return
        folder = folder.parent
