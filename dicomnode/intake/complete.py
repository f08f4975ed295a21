"""Complete stage: a study is ready when its associations are released and no instance came for a quiet period,
or when no instance came for the longest wait whatever its associations."""

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


@dataclass(frozen=True)
class Completion:
    """Studies ready to process, why each of the others still waits, and in how many seconds the first of them is
    due to be ready if nothing more comes (None when none waits for a time)."""

    ready: list[ReadyStudy]
    waiting: dict[str, str]
    due_in_s: float | None = None


def ready_studies(
    store: Store, open_since: dict[str, float], quiet_period_s: float, max_wait_s: float, now: float | None = None, interrupted: dict[str, str] | None = None
) -> Completion:
    """Studies with new instances that are complete: no open association sent to them and no instance came for
    ``quiet_period_s``; or, whatever their associations, no instance came for ``max_wait_s`` (force-complete, for
    senders that keep an association open). ``open_since`` maps a study to when its oldest open association first
    sent to it. An ``interrupted`` study (an association sending it was aborted or cut off, or the node stopped
    while one was open; study -> why) may be partial: it waits for ``max_wait_s`` too, unless a later association
    sending it was released."""
    now = store.now() if now is None else now
    interrupted = interrupted or {}
    ready, waiting, due = [], {}, []
    for row in store.studies_with_new_instances():
        study, quiet = row["study_uid"], now - row["last_received_at"]
        due.append((quiet_period_s if study not in open_since and study not in interrupted else max_wait_s) - quiet)
        if study in open_since and quiet >= max_wait_s:
            log.warning("study %s: association still open, no instance for %.0f s: processed (max_wait_s)", study, quiet)
            ready.append(ReadyStudy(study, row["max_seq"]))
        elif study in interrupted and quiet >= max_wait_s:
            log.warning("study %s: %s; no instance for %.0f s: processed (max_wait_s)", study, interrupted[study], quiet)
            ready.append(ReadyStudy(study, row["max_seq"]))
        elif study in interrupted and study not in open_since:
            waiting[study] = f"{interrupted[study]}: it may be partial, complete {max_wait_s:.0f} s after its last instance"
        elif study in open_since:
            since = time.strftime("%H:%M:%S", time.localtime(open_since[study]))
            waiting[study] = f"waiting for association release since {since} (at most {max_wait_s:.0f} s after its last instance)"
        elif quiet >= quiet_period_s:
            ready.append(ReadyStudy(study, row["max_seq"]))
        else:
            last = time.strftime("%H:%M:%S", time.localtime(row["last_received_at"]))
            waiting[study] = f"quiet period: last instance at {last}, complete {quiet_period_s:.0f} s after it"
    return Completion(ready, waiting, min((d for d in due if d > 0), default=None))


def open_jobs(store: Store, ready: list[ReadyStudy]) -> list[Job]:
    """Create a job (a new result version) for each ready study that no other completer has covered meanwhile."""
    jobs = store.create_jobs([(study.study_uid, study.upto_seq) for study in ready]) if ready else []
    for job in jobs:
        log.info("study %s complete: job %d, version %d", job.study_uid, job.id, job.version)
    return jobs
