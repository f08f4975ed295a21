"""Shadow mode: a candidate model runs on the series each live job measured, in a thread of its own, after the
live job's results are recorded and queued; what it gives is compared with the live measurements and recorded in the
store, never saved for delivery nor sent. The live path only hands over what it already holds (the series' files
and the live measurements, whose masks are kept in their boxes), so the live result never waits for the candidate;
a live job that finishes while the candidate is still busy gets no shadow run (logged)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dicomnode.analysis.agreement import agreement
from dicomnode.analysis.measure import Measurements, measure
from dicomnode.config import NodeConfig
from dicomnode.imaging.load import SeriesError, load_series
from dicomnode.instance import Instance
from dicomnode.node.pipeline import Processed
from dicomnode.renal import Structure
from dicomnode.segment.configured import load_candidate, model_folder
from dicomnode.segment.model import SeriesSegmenter
from dicomnode.store import Store

log = logging.getLogger(__name__)

#: How long the node's stop waits for a shadow run in progress.
STOP_WAIT_S = 30.0


@dataclass(frozen=True)
class ShadowTask:
    """What a live job hands to the candidate: the files of the series it measured and its measurements."""

    job_id: int
    study_uid: str
    files: list[Path]
    live: Measurements


class ShadowRunner:
    """Runs the candidate (loaded by ``load`` on its first run, then kept warm) on one live study at a time."""

    def __init__(self, config: NodeConfig, store: Store, load: Callable[[], SeriesSegmenter]) -> None:
        self.config, self.store, self._load = config, store, load
        self._candidate: SeriesSegmenter | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._busy_with = 0  # the job of the run in progress
        self._stopping = False

    def offer(self, job_id: int, study_uid: str, processed: Processed, instances: list[Instance]) -> bool:
        """Start the candidate on what live job ``job_id`` measured, unless it measured no series, the candidate is still
        busy with an earlier job (logged) or the node is stopping; False where no run starts."""
        if processed.measurements is None or processed.series_uid is None:
            return False  # no series was measured: nothing to compare
        task = ShadowTask(job_id, study_uid, [i.path for i in instances if i.series_uid == processed.series_uid], processed.measurements)
        with self._lock:
            if self._stopping:
                return False
            if self._thread is not None and self._thread.is_alive():
                log.info("job %d: shadow run skipped: the candidate %s is still busy with job %d", job_id, self.config.shadow.model, self._busy_with)
                return False
            self._busy_with = job_id
            self._thread = threading.Thread(target=self._run, args=(task,), name=f"shadow job {job_id}", daemon=True)
            self._thread.start()
        return True

    def stop(self) -> None:
        """Start no more runs, and wait for the one in progress for at most ``STOP_WAIT_S``: a run still going then is
        left to die with the process, unrecorded (the node's stop does not wait on a model it never sends)."""
        with self._lock:
            self._stopping = True
            thread = self._thread
        if thread is not None:
            thread.join(STOP_WAIT_S)
            if thread.is_alive():
                log.warning("stopping without waiting for the shadow run of job %d: it is not recorded", self._busy_with)

    def _run(self, task: ShadowTask) -> None:
        started = time.perf_counter()
        try:
            series = load_series(task.files)
            if self._candidate is None:
                self._candidate = self._load()
            candidate = measure(series, self._candidate.segment(series))
            del series
            compared = agreement(task.live, candidate)
            self.store.record_shadow(task.job_id, task.study_uid, self.config.model.name, self.config.shadow.model, compared)
        except SeriesError as exc:
            log.warning("job %d: shadow run not done: the series cannot be loaded again (%s)", task.job_id, exc)
            return
        except Exception:  # the candidate must never take the node down; the live result is not concerned
            log.exception("job %d: shadow run of %s failed", task.job_id, self.config.shadow.model)
            return
        figures = "; ".join(
            f"{c.side} {c.structure} {c.candidate_ml - c.live_ml:+.1f} ml, Dice {c.dice:.3f}" for c in compared if c.structure is Structure.PARENCHYMA
        )
        log.info(
            "job %d: shadow run of %s recorded in %.1f s: %s", task.job_id, self.config.shadow.model, time.perf_counter() - started, figures or "no kidney"
        )


def shadow_runner(config: NodeConfig, store: Store, candidate: SeriesSegmenter | None = None) -> ShadowRunner | None:
    """The runner of ``shadow.model``, None where shadow mode is off; ``candidate`` stands in for the model (tests).
    A candidate folder that is not there is a SettingError now, at start; the model itself loads at its first run."""
    if not config.shadow.model:
        return None
    if candidate is not None:
        return ShadowRunner(config, store, lambda: candidate)
    model_folder(config, config.shadow.model, "shadow.model")
    return ShadowRunner(config, store, lambda: load_candidate(config))
