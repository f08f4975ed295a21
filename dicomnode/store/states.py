"""The named states of a job and of its deliveries; only the store package changes them (``transitions.py`` moves a
job, settles it and supersedes earlier versions).

A job is processed once (``JobState``), ends with one ``Outcome``, and then its result files travel to every
destination (``DeliveryState`` per file and destination, summed up per job as ``JobDelivery``). The values are the
strings kept in the database and printed by ``dicomnode status``.
"""

from __future__ import annotations

import enum


class JobState(str, enum.Enum):
    """Processing: pending -> running -> done; a running job cut off by a crash goes back to pending."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"


class JobKind(str, enum.Enum):
    """What a job does: run the model on a study's instances, or take a reader's correction of its result."""

    MODEL = "model"
    CORRECTION = "correction"  # a reader's SEG: volumes from its masks, no model; its versions supersede only each other


class Outcome(str, enum.Enum):
    """What processing gave, set once when the job is done."""

    RESULT = "result"  # SEG and SR with volumes (flagged for review where QC asked for it)
    NO_RESULT = "no_result"  # a verdict without volumes: no arterial series, no kidney, QC withheld, ...
    FAILED = "failed"  # a stage raised; the error is in the job


class DeliveryState(str, enum.Enum):
    """One result file for one destination."""

    QUEUED = "queued"
    SENT = "sent"  # stored by the destination (and, where it was asked, committed)
    COMMITTING = "committing"  # stored; the destination was asked for storage commitment and has not reported yet
    DEAD = "dead"  # parked after the last try or for a destination no longer configured; ``dicomnode retry`` queues it again
    SUPERSEDED = "superseded"  # not sent: a later version of the study's result replaced it first


class JobDelivery(str, enum.Enum):
    """A job's deliveries taken together; derived from its ``DeliveryState`` rows."""

    NONE = "none"  # nothing to send (no result file or no destination)
    SENDING = "sending"  # at least one file still queued, or stored and awaiting the destination's commitment
    DELIVERED = "delivered"  # every file confirmed by every destination
    FAILED = "failed"  # nothing queued and at least one file parked
    SUPERSEDED = "superseded"  # nothing queued or parked, and a later version replaced what was not sent yet


def job_delivery(states: set[DeliveryState]) -> JobDelivery:
    """The job's delivery progress from the states of its delivery rows."""
    if not states:
        return JobDelivery.NONE
    if DeliveryState.QUEUED in states or DeliveryState.COMMITTING in states:
        return JobDelivery.SENDING
    if DeliveryState.DEAD in states:
        return JobDelivery.FAILED
    return JobDelivery.SUPERSEDED if DeliveryState.SUPERSEDED in states else JobDelivery.DELIVERED
