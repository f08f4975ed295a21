"""The running node: receiver, completion ticks, one worker for jobs and one for deliveries (APScheduler)."""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

import pydicom
from apscheduler.schedulers.background import BackgroundScheduler

from dicomnode.complete import open_jobs, ready_studies
from dicomnode.config import NodeConfig
from dicomnode.database import open_database
from dicomnode.pipeline import failed, process_study, save_results
from dicomnode.receive import OpenAssociations, Receiver
from dicomnode.retention import clean
from dicomnode.segment import Model, Segmenter
from dicomnode.send import send_due
from dicomnode.states import JobState
from dicomnode.store import Job, Queued, Store
from dicomnode.uids import ResultUids, job_seed
from dicomnode.web import WebServer

log = logging.getLogger(__name__)


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


def load_segmenter(config: NodeConfig) -> Segmenter:
    model = Model.from_folder(config.path(config.model.folder) / config.model.name)
    return Segmenter(model, config.model.device, config.model.mirroring, config.model.tile_step_size)


class Node:
    """Owns the store, the SCP, the warm model and the scheduler."""

    def __init__(self, config: NodeConfig, segmenter: Segmenter | None = None) -> None:
        self.config = config
        self.store = Store(open_database(config.database, config.base_dir))
        self.open = OpenAssociations()
        self.receiver = Receiver(config, self.store, self.open)
        self.segmenter = segmenter or load_segmenter(config)
        self.scheduler = BackgroundScheduler()
        self.web = WebServer(config, self.store, self.receiver.listening, lambda: bool(self.scheduler.running)) if config.web.enabled else None
        self._stopped = threading.Event()
        self._waiting: dict[str, str] | None = None  # what status last showed as waiting

    def start(self) -> None:
        for folder in remove_unrecorded_results(self.config.path(self.config.results), self.store.jobs()):
            log.warning("removed %s: results of a run that was cut off before it was recorded; the job runs again", folder)
        for job in self.store.requeue_interrupted():
            log.warning("job %d (study %s) was interrupted; it runs again", job.id, job.study_uid)
        self.receiver.start()
        tick = self.config.tick_s
        self.scheduler.add_job(self.complete_studies, "interval", seconds=tick, max_instances=1, coalesce=True)
        self.scheduler.add_job(self.run_pending_jobs, "interval", seconds=tick, max_instances=1, coalesce=True)
        self.scheduler.add_job(self.deliver, "interval", seconds=tick, max_instances=1, coalesce=True)
        self.scheduler.add_job(self.clean, "interval", seconds=self.config.retention.interval_s, max_instances=1, coalesce=True)
        self.scheduler.start()
        if self.web is not None:
            self.web.start()

    def stop(self) -> None:
        self._stopped.set()
        if self.web is not None:
            self.web.stop()
        self.receiver.stop()
        self.scheduler.shutdown(wait=True)
        self.store.close()

    def complete_studies(self) -> None:
        completion = ready_studies(self.store, self.open.studies(), self.config.quiet_period_s, self.config.max_wait_s)
        if completion.waiting != self._waiting:  # written only when it changes, not every tick
            self.store.set_waiting(completion.waiting)
            self._waiting = completion.waiting
        open_jobs(self.store, completion.ready)

    def run_pending_jobs(self) -> None:
        for job in self.store.jobs(JobState.PENDING):
            if self._stopped.is_set():
                return
            self.run_job(job)

    def run_job(self, job: Job) -> None:
        """Process one job and queue its results for every destination."""
        self.store.start_job(job.id)
        log.info("job %d: processing study %s version %d", job.id, job.study_uid, job.version)
        instances = self.store.study_instances(job.study_uid, job.upto_seq)
        if self.config.log_patient_data and instances:
            header = pydicom.dcmread(instances[0].path, stop_before_pixels=True, specific_tags=["PatientName", "PatientID"])
            log.info("job %d: patient %s, ID %s", job.id, header.get("PatientName", ""), header.get("PatientID", ""))
        try:
            processed = process_study(instances, self.config, self.segmenter, ResultUids(job_seed(job.study_uid, job.version)))
            saved = []
            if processed.results is not None:
                folder = self.config.path(self.config.results) / job.study_uid / f"v{job.version}"
                saved = save_results(processed.results, folder)
        except Exception as exc:  # a job must never take the node down
            log.exception("job %d failed", job.id)
            processed, saved = failed(exc), []
        figures = processed.measurements.summary() if processed.measurements else None
        if figures is not None and processed.qc is not None:
            figures.update(qc=processed.qc.verdict, qc_findings=processed.qc.lines())
        queued = [Queued(d.name, f.sop_uid, f.path) for f in saved for d in self.config.destinations if f.output in d.formats]
        self.store.finish_job(
            job.id,
            processed.outcome,
            queued,
            verdict=processed.verdict,
            reasons=processed.reasons,
            series_uid=processed.series_uid,
            measurements=figures,
            error=processed.error,
            timings=processed.timings,
        )
        log.info("job %d: %s (%s); %s", job.id, processed.outcome.value, processed.verdict, "; ".join(processed.reasons[:1]))

    def deliver(self) -> None:
        send_due(self.config, self.store)

    def clean(self) -> None:
        config = self.config
        clean(self.store, config.path(config.storage), config.path(config.results), config.retention, set(self.open.studies()))
