"""The running node: receiver, completion ticks, one worker for jobs and one for deliveries (APScheduler)."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pydicom
from apscheduler.schedulers.background import BackgroundScheduler

from dicomnode.base.uids import ResultUids, job_seed
from dicomnode.config import NodeConfig
from dicomnode.intake.complete import open_jobs, ready_studies
from dicomnode.intake.receive import Receiver
from dicomnode.measured import HistoryEntry
from dicomnode.node.corrections import CorrectionIntake, process_correction
from dicomnode.node.pipeline import no_priors
from dicomnode.node.retention import clean
from dicomnode.node.run import process_job
from dicomnode.node.shadow import shadow_runner
from dicomnode.node.web import WebServer
from dicomnode.options import Role
from dicomnode.outbound.commitment import Commitments
from dicomnode.outbound.save import Saved
from dicomnode.outbound.send import send_due
from dicomnode.outbound.supersede import reject_superseded
from dicomnode.results.write import warm_writers
from dicomnode.segment.configured import load_segmenter
from dicomnode.segment.model import SeriesSegmenter
from dicomnode.store import Job, LeaseLost, Queued, Store
from dicomnode.store.database import open_database
from dicomnode.store.open_associations import OpenAssociations
from dicomnode.store.states import JobKind, JobState, Outcome

log = logging.getLogger(__name__)

#: The scheduler's names for the tasks that one step wakes for the next: a completed study wakes the worker, a
#: finished job the sender, so that neither waits for its next tick; completion is checked again when a study's
#: quiet period ends, not at the tick after.
RUN_JOBS, DELIVER, COMPLETE = "run pending jobs", "deliver", "complete studies"
#: The least delay of completion's wake-up by its own run: the scheduler counts a run as running until a moment
#: after it returns, and skips one woken meanwhile.
WAKE_AFTER_S = 0.05


def remove_unrecorded_results(results: Path, jobs: list[Job]) -> list[Path]:
    """Delete ``results/<study>/v<version>`` folders whose job never recorded them (killed while writing or before
    its outcome was committed); such a job is pending or running and runs again. Returns the folders removed."""
    recorded = {(job.study_uid, f"v{job.version}") for job in jobs if job.state is JobState.DONE}
    removed = []
    for folder in sorted(results.glob("*/v*")) if results.exists() else []:
        if folder.is_dir() and (folder.parent.name, folder.name) not in recorded:
            shutil.rmtree(folder)
            removed.append(folder)
    return removed


class Node:
    """Owns the store, and as its role says: the SCP, the warm model, the senders; a scheduler drives them."""

    def __init__(self, config: NodeConfig, segmenter: SeriesSegmenter | None = None, role: Role = Role.ALL, candidate: SeriesSegmenter | None = None) -> None:
        """``segmenter`` and ``candidate`` stand in for the configured model and shadow mode's candidate (tests)."""
        self.config, self.role = config, role
        self.store = Store(open_database(config), config.corrections.withdraw_model_results)
        self.embedded = self.store.db.dialect.name == "sqlite"
        host = config.cluster.name or socket.gethostname()
        self.receiver_name = f"{host}:{config.port}"
        self.worker_name = f"{host}:{os.getpid()}"
        self.receiver = (
            Receiver(
                config,
                self.store,
                OpenAssociations(self.store, self.receiver_name),
                Commitments(config, self.store),
                CorrectionIntake(config, self.store) if config.corrections.enabled else None,
            )
            if role in (Role.ALL, Role.RECEIVER)
            else None
        )
        self.segmenter = (segmenter or load_segmenter(config)) if role in (Role.ALL, Role.WORKER) else None
        if self.segmenter is not None:
            warm_writers()
        self.shadow = shadow_runner(config, self.store, candidate) if self.segmenter is not None else None  # None: shadow mode off
        self.scheduler = BackgroundScheduler()
        listening = self.receiver.listening if self.receiver else lambda: True
        self.web = WebServer(config, self.store, listening, lambda: bool(self.scheduler.running)) if config.web.enabled else None
        self._stopped = threading.Event()
        self._waiting: dict[str, str] | None = None  # what status last showed as waiting
        self._busy: set[str] = set()  # the scheduled tasks running now (RUN_JOBS, DELIVER, COMPLETE)

    def start(self) -> None:
        tick = self.config.tick_s
        if self.segmenter is not None:
            if self.embedded:  # one worker: whatever was running was ours (in a cluster, the lease decides)
                for folder in remove_unrecorded_results(self.config.path(self.config.results), self.store.jobs()):
                    log.warning("removed %s: results of a run that was cut off before it was recorded; the job runs again", folder)
                for job in self.store.requeue_interrupted():
                    log.warning("job %d (study %s) was interrupted; it runs again", job.id, job.study_uid)
            self.scheduler.add_job(self.run_pending_jobs, "interval", seconds=tick, max_instances=1, coalesce=True, id=RUN_JOBS)
            self.scheduler.add_job(self.reap, "interval", seconds=tick, max_instances=1, coalesce=True)
        if self.receiver is not None:
            self.store.receiver_alive(self.receiver_name)
            self.receiver.start()
            self.scheduler.add_job(self.complete_studies, "interval", seconds=tick, max_instances=1, coalesce=True, id=COMPLETE)
        if self.role in (Role.ALL, Role.SENDER):
            if self.embedded and self.store.release_delivery_claims():
                log.warning("deliveries claimed by a sender that was cut off are queued again")
            self.scheduler.add_job(self.deliver, "interval", seconds=tick, max_instances=1, coalesce=True, id=DELIVER)
            self.scheduler.add_job(self.clean, "interval", seconds=self.config.retention.interval_s, max_instances=1, coalesce=True)
        self.scheduler.start()
        if self.web is not None:
            self.web.start()
        log.info("role %s started (%s database)", self.role.value, self.store.db.dialect.name)

    def stop(self) -> None:
        self._stopped.set()
        if self.web is not None:
            self.web.stop()
        if self.receiver is not None:
            self.receiver.stop()
        if self.shadow is not None:  # first: a job that ends while the scheduler stops starts no candidate run
            self.shadow.stop()
        self.scheduler.shutdown(wait=True)
        self.store.close()

    def complete_studies(self) -> None:
        started = time.monotonic()
        with self._running(COMPLETE):
            self.store.receiver_alive(self.receiver_name)
            open_since = self.store.open_studies(self.config.cluster.receiver_timeout_s)
            interrupted = self.store.interrupted_studies()
            completion = ready_studies(self.store, open_since, self.config.quiet_period_s, self.config.max_wait_s, self.store.now(), interrupted)
            if completion.waiting != self._waiting:  # written only when it changes, not every tick
                self.store.set_waiting(completion.waiting)
                self._waiting = completion.waiting
            if open_jobs(self.store, completion.ready):
                self._wake(RUN_JOBS)
        due = completion.due_in_s
        if due is not None and due < self.config.tick_s:  # checked again when a quiet period ends, not at the tick after
            timer = threading.Timer(max(due - (time.monotonic() - started), WAKE_AFTER_S), self._wake, (COMPLETE,))
            timer.daemon = True
            timer.start()

    def reap(self) -> None:
        for job_id in self.store.reap_expired():
            log.warning("job %d: its worker's lease ran out (worker gone or stalled); it runs again", job_id)

    def run_pending_jobs(self) -> None:
        with self._running(RUN_JOBS):
            while not self._stopped.is_set() and (job := self.store.claim_job(self.worker_name, self.config.cluster.lease_s)) is not None:
                self.run_job(job)

    def run_job(self, job: Job) -> None:
        """Process one claimed job, renewing its lease while it runs, and queue its results for the destinations."""
        done = threading.Event()
        heartbeat = threading.Thread(target=self._keep_lease, args=(job.id, done), daemon=True)
        heartbeat.start()
        try:
            self._process(job)
        finally:
            done.set()
            heartbeat.join()

    def _keep_lease(self, job_id: int, done: threading.Event) -> None:
        lease = self.config.cluster.lease_s
        while not done.wait(lease / 4):
            if not self.store.renew_lease(job_id, self.worker_name, lease):
                log.error("job %d: lease lost (this worker stalled past cluster.lease_s); another worker may run it", job_id)
                return

    def _process(self, job: Job) -> None:
        if job.kind is JobKind.CORRECTION:
            self._take_correction(job)
            return
        log.info("job %d: processing study %s version %d", job.id, job.study_uid, job.version)
        assert self.segmenter is not None
        instances = self.store.study_instances(job.study_uid, job.upto_seq)
        if self.config.log_patient_data and instances:
            header = pydicom.dcmread(instances[0].path, stop_before_pixels=True, specific_tags=["PatientName", "PatientID"])
            log.info("job %d: patient %s, ID %s", job.id, header.get("PatientName", ""), header.get("PatientID", ""))
        keep = self.config.history.enabled
        folder = self.config.path(self.config.results) / job.study_uid / f"v{job.version}"
        uids, priors = ResultUids(job_seed(job.study_uid, job.version)), self.store.history.of_patient if keep else no_priors
        ran = process_job(f"job {job.id}", instances, self.config, self.segmenter, folder, uids, priors)
        processed = ran.processed
        if not self._record(job, processed.outcome, ran.saved, processed.measured, processed.record()):
            return
        log.info("job %d: %s (%s); %s", job.id, processed.outcome.value, processed.verdict, "; ".join(processed.reasons[:1]))
        if self.shadow is not None and not self._stopped.is_set():  # the candidate, in its own thread, once the live result is queued
            self.shadow.offer(job.id, job.study_uid, processed, instances)

    def _take_correction(self, job: Job) -> None:
        """A reader's correction: its SR queued for the destinations that take SRs, the history's reader row."""
        log.info("job %d: taking the correction of study %s (version %d)", job.id, job.study_uid, job.version)
        folder = self.config.path(self.config.results) / job.study_uid / f"v{job.version}"
        ran = process_correction(job, self.store.correction_of(job.id), self.config, self.store, folder, ResultUids(job_seed(job.study_uid, job.version)))
        if self._record(job, ran.outcome, ran.saved, ran.measured, ran.record()):
            log.info("job %d: %s (%s); %s", job.id, ran.outcome.value, ran.verdict, "; ".join(ran.reasons[1:]))

    def _record(self, job: Job, outcome: Outcome, saved: list[Saved], measured: HistoryEntry | None, record: dict[str, object]) -> bool:
        """Record a job's outcome with its history row, queue its files for the destinations that take them, reject
        what it replaces; False where this worker's lease ran out (nothing recorded)."""
        queued = [Queued(d.name, f.sop_uid, f.path) for f in saved for d in self.config.destinations if f.output in d.formats]
        try:
            kept = measured if self.config.history.enabled else None
            self.store.finish_job(job.id, outcome, queued, worker=self.worker_name, measured=kept, **record)
        except LeaseLost as exc:
            log.error("job %d: result discarded: %s", job.id, exc)
            return False
        reject_superseded(self.store, self.config.path(self.config.results))
        if queued:
            self._wake(DELIVER)
        return True

    def _wake(self, job_id: str) -> None:
        """Run a scheduled task of this node now rather than at its next tick; nothing where it is running (it finds
        the new work itself), belongs to another role, or the node is stopping."""
        task = self.scheduler.get_job(job_id)
        if task is not None and job_id not in self._busy and not self._stopped.is_set():
            task.modify(next_run_time=datetime.now(task.next_run_time.tzinfo if task.next_run_time else None))

    def deliver(self) -> None:
        with self._running(DELIVER):
            reject_superseded(self.store, self.config.path(self.config.results))
            send_due(self.config, self.store, sender=self.worker_name)

    @contextmanager
    def _running(self, task: str) -> Iterator[None]:
        self._busy.add(task)
        try:
            yield
        finally:
            self._busy.discard(task)

    def clean(self) -> None:
        config = self.config
        busy = set(self.store.open_studies(config.cluster.receiver_timeout_s))
        clean(self.store, config.path(config.storage), config.path(config.results), config.retention, busy)
