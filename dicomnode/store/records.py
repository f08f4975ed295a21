"""What the store's tables hold, as dataclasses, and how a row becomes one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dicomnode.store.database import Row
from dicomnode.store.states import DeliveryState, JobDelivery, JobKind, JobState, Outcome


@dataclass(frozen=True)
class Job:
    """One processing run of a study (a new version when more instances came after a run)."""

    id: int
    study_uid: str
    version: int
    upto_seq: int
    state: JobState
    outcome: Outcome | None  # set when the state becomes done
    delivery: JobDelivery
    series_uid: str | None
    verdict: str | None
    reasons: list[str]
    error: str | None
    measurements: dict | None
    timings: dict[str, float]
    created_at: float
    updated_at: float
    kind: JobKind = JobKind.MODEL


@dataclass(frozen=True)
class Queued:
    """A result file to send to one destination, as a finished job queues it."""

    destination: str
    sop_uid: str
    path: Path


@dataclass(frozen=True)
class FinishedStudy:
    """A study whose every job is done and delivered (or had nothing to deliver), with no instance left unprocessed."""

    study_uid: str
    upto_seq: int  # its instances up to here are covered by its jobs
    last_activity: float  # latest of its last instance received and its last job change
    versions: tuple[int, ...]


@dataclass(frozen=True)
class Counts:
    """Totals for monitoring, read in one pass (``/metrics``)."""

    instances_received: int  # ever indexed, including those retention deleted since
    instances_stored: int
    refusals: int
    studies_waiting: int
    studies_purged: int
    jobs: dict[tuple[str, str, str], int]  # (state, outcome or "", delivery) -> jobs
    deliveries: dict[str, int]  # delivery state -> files
    failed_sends: int  # attempts that did not deliver
    stage_seconds: dict[str, tuple[float, int]]  # stage -> (seconds in all, jobs timed)


@dataclass(frozen=True)
class DeliveryRecord:
    """One result file to be sent to one destination."""

    id: int
    job_id: int
    destination: str
    path: Path
    sop_uid: str
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    last_error: str | None


@dataclass(frozen=True)
class Superseded:
    """A result sent to a destination, and the later version of its study whose rejection note is to name it."""

    delivery: DeliveryRecord
    study_uid: str
    version: int
    by_job: int
    by_version: int
    by_kind: JobKind = JobKind.MODEL


def job_from(row: Row) -> Job:
    return Job(
        row["id"],
        row["study_uid"],
        row["version"],
        row["upto_seq"],
        JobState(row["state"]),
        Outcome(row["outcome"]) if row["outcome"] else None,
        JobDelivery(row["delivery"]),
        row["series_uid"],
        row["verdict"],
        json.loads(row["reasons"]),
        row["error"],
        json.loads(row["measurements"]) if row["measurements"] else None,
        json.loads(row["timings"]),
        row["created_at"],
        row["updated_at"],
        JobKind(row["kind"]),
    )


def finished_from(row: Row) -> FinishedStudy:
    versions = tuple(sorted(int(v) for v in str(row["versions"]).split(",")))
    return FinishedStudy(row["study_uid"], row["upto_seq"], row["last_activity"], versions)


def delivery_from(row: Row) -> DeliveryRecord:
    return DeliveryRecord(
        row["id"],
        row["job_id"],
        row["destination"],
        Path(row["path"]),
        row["sop_uid"],
        DeliveryState(row["state"]),
        row["attempts"],
        row["next_attempt_at"],
        row["last_error"],
    )
