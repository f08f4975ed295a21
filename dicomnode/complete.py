"""Complete stage: a study is ready when its associations are released and no instance came for a quiet period."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from dicomnode.store import Job, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReadyStudy:
    """A study with instances that no job covers yet, quiet long enough to process."""

    study_uid: str
    upto_seq: int


def ready_studies(store: Store, open_studies: set[str], quiet_period_s: float, now: float | None = None) -> list[ReadyStudy]:
    """Studies that have new instances, no open association and no instance for ``quiet_period_s``."""
    now = time.time() if now is None else now
    return [
        ReadyStudy(row["study_uid"], row["max_seq"])
        for row in store.studies_with_new_instances()
        if row["study_uid"] not in open_studies and now - row["last_received_at"] >= quiet_period_s
    ]


def open_jobs(store: Store, ready: list[ReadyStudy]) -> list[Job]:
    """Create a job (a new result version) for each ready study."""
    jobs = []
    for study in ready:
        job = store.create_job(study.study_uid, study.upto_seq)
        log.info("study %s complete: job %d, version %d", study.study_uid, job.id, job.version)
        jobs.append(job)
    return jobs
