"""Tell each destination which of the node's results it should no longer show.

When a later version of a study's result is done (more instances came after a run: a series cut off by an abort, a
restart, a late series), what earlier versions queued and did not send is superseded and never sent
(``store.finish_job``), and what they did send gets a rejection note (IHE IOCM, ``results/rejection.py``): one per
destination, queued as a delivery of the latest version and sent before that version's own results, which wait for
it. A withheld or failed later version rejects the earlier results all the same: the node no longer stands by them.
A reader's correction replaces an earlier correction of its study the same way, and the model's results only where
the site withdraws them (``store.transitions.supersedes``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from dicomnode.base.files import save_dataset
from dicomnode.base.uids import ResultUids, job_seed
from dicomnode.results.rejection import write_rejection_note
from dicomnode.store import Queued, Store, Superseded
from dicomnode.store.states import JobKind

log = logging.getLogger(__name__)


def reject_superseded(store: Store, results: Path) -> int:
    """Queue a rejection note for every sent result a later version of its study replaced; returns how many."""
    groups: dict[tuple[str, int, str], list[Superseded]] = defaultdict(list)
    for item in store.superseded_sent():
        groups[(item.study_uid, item.by_job, item.delivery.destination)].append(item)
    queued = 0
    for (study_uid, by_job, destination), items in groups.items():
        by_version = items[0].by_version
        datasets, gone = [], []
        for item in items:
            try:
                datasets.append(pydicom.dcmread(item.delivery.path, stop_before_pixels=True))
            except (OSError, InvalidDicomError):
                gone.append(item.delivery.sop_uid)
        ids = [item.delivery.id for item in items]
        if gone:
            log.error("study %s: %s sent to %s cannot be rejected: its result file is gone", study_uid, ", ".join(gone), destination)
        if not datasets:
            store.queue_rejection(by_job, destination, None, ids)
            continue
        versions = ", ".join(str(v) for v in sorted({item.version for item in items}))
        description = (
            f"Superseded: renal volumetry version {by_version} of this study, a reader's correction, replaces version {versions}; "
            "do not use the rejected segmentation, report or summary."
            if items[0].by_kind is JobKind.CORRECTION
            else f"Superseded: renal volumetry version {by_version} of this study replaces version {versions}, made before "
            "the study's instances were complete; do not use the rejected segmentation, report or summary."
        )
        uids = ResultUids(job_seed(study_uid, by_version))
        note = write_rejection_note(datasets, description, uids, f"rejection/{destination}/{ids[0]}")
        path = results / study_uid / f"v{by_version}" / f"rejection-{destination}-{ids[0]}.dcm"
        save_dataset(path, note)
        if store.queue_rejection(by_job, destination, Queued(destination, str(note.SOPInstanceUID), path), ids):
            log.warning("study %s: version %s sent to %s superseded by version %d: rejection note queued", study_uid, versions, destination, by_version)
            queued += 1
    return queued
