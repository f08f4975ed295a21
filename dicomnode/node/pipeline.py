"""One study through select -> load -> segment -> measure -> qc -> write, with the verdict and stage timings."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import pydicom

from dicomnode.analysis.followup import FollowUp, compare
from dicomnode.analysis.measure import Measurements, measure
from dicomnode.analysis.plan import ReportPlan, decide
from dicomnode.analysis.qc import QCReport, check
from dicomnode.base.memory import peak_gib, reset_peak
from dicomnode.base.uids import RANDOM_UIDS, ResultUids
from dicomnode.config import NodeConfig
from dicomnode.imaging.load import LoadedSeries, SeriesError, load_series
from dicomnode.instance import Instance
from dicomnode.measured import HistoryEntry, Patient
from dicomnode.options import OutputFormat
from dicomnode.renal import SIDES, STRUCTURES, Structure
from dicomnode.results.sr import write_no_result_sr
from dicomnode.results.write import NEEDS_PIXELS, WRITERS, Results, write_results
from dicomnode.segment.model import SeriesSegmenter
from dicomnode.selection.series import NO_ARTERIAL, Selection, patient_conflicts, select_series, summarise
from dicomnode.store.states import Outcome

log = logging.getLogger(__name__)

WITHHELD = "QC failed: volumes withheld"
PARENCHYMA_ONLY = "renal parenchyma only: cortex and medulla withheld"
IDENTITY_CONFLICT = "patient identity conflict"

#: A patient's earlier results (the store's measurement history), oldest first.
Priors = Callable[[Patient], list[HistoryEntry]]


def no_priors(patient: Patient) -> list[HistoryEntry]:
    """No history: ``dicomnode run``, or ``history.enabled: false``."""
    return []


@dataclass
class Processed:
    """What processing a study gave: an outcome, a verdict with reasons, and results where there are any."""

    outcome: Outcome
    verdict: str
    reasons: list[str]
    series_uid: str | None = None
    measurements: Measurements | None = None
    results: Results | None = None
    qc: QCReport | None = None
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    peak_gib: dict[str, float] = field(default_factory=dict)  # the process's peak resident memory in each stage
    structures: tuple[str, ...] = ()  # what the results report: all three, or the parenchyma alone
    measured: HistoryEntry | None = None  # the study's row of the measurement history (sent or withheld)
    followup: FollowUp | None = None  # the volumes against the patient's earlier results
    plan: ReportPlan | None = None  # what is delivered per side and structure, and why anything is absent

    def record(self) -> dict[str, object]:
        """The job record's figures, as the store keeps them and ``dicomnode run`` writes them: verdict, reasons,
        series, measurements (with the QC verdict, findings and notes, and what was sent), error and timings."""
        figures = self.measurements.summary() if self.measurements else None
        if figures is not None and self.qc is not None:
            figures.update(qc=self.qc.verdict, qc_findings=self.qc.lines(), qc_notes=[str(n) for n in self.qc.notes], sent=list(self.structures))
        if figures is not None and self.plan is not None:
            figures.update(
                delivered=[f"{side} {structure}" for structure, side in self.plan.delivered], not_reported=self.plan.lines(), qc=self.plan.qc_verdict
            )
            if not self.plan.both_kidneys:
                figures.update(total_parenchyma_ml=None, left_split=None)
            if not all(self.plan.delivers(Structure.CORTEX, side) for side in SIDES):
                figures.update(cortex_ratio=None)  # both kidneys' cortex, or none
        if figures is not None and self.followup is not None:
            figures.update(followup=self.followup.lines())
        return {
            "verdict": self.verdict,
            "reasons": self.reasons,
            "series_uid": self.series_uid,
            "measurements": figures,
            "error": self.error,
            "timings": self.timings,
        }


@contextmanager
def _timed(timings: dict[str, float], peaks: dict[str, float], stage: str) -> Iterator[None]:
    """Time a stage into ``timings``, and the process's peak memory in it into ``peaks`` where the system tells it
    (other threads' memory included: a receiver's buffers count too)."""
    measured = reset_peak()
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = round(time.perf_counter() - start, 3)
        peak = peak_gib() if measured else None
        if peak is not None:
            peaks[stage] = round(peak, 3)


def process_study(
    instances: list[Instance], config: NodeConfig, segmenter: SeriesSegmenter, uids: ResultUids = RANDOM_UIDS, priors: Priors = no_priors
) -> Processed:
    """Run every stage on one study; a study without a usable arterial series is a verdict, not a crash. ``priors``
    gives the patient's earlier results, which the SR and the summary page compare this study's volumes with.

    Where configured, a study without result gets a text SR that says why; not a study whose instances name
    different patients, since the SR would carry one of their identities.
    """
    processed = _run_stages(instances, config, segmenter, uids, priors)
    if processed.outcome is Outcome.NO_RESULT and config.send_text_sr_without_result and instances and processed.verdict != IDENTITY_CONFLICT:
        source = pydicom.dcmread(instances[0].path, stop_before_pixels=True)
        processed.results = Results({OutputFormat.SR: [write_no_result_sr(source, processed.verdict, processed.reasons, uids)]})
    return processed


def _run_stages(instances: list[Instance], config: NodeConfig, segmenter: SeriesSegmenter, uids: ResultUids, priors: Priors) -> Processed:
    timings: dict[str, float] = {}
    peaks: dict[str, float] = {}
    with _timed(timings, peaks, "select"):
        summaries = summarise(instances)
        conflicts = patient_conflicts(summaries)
        if conflicts:
            log.warning("patient identity conflict: %s", "; ".join(conflicts) if config.log_patient_data else f"{len(conflicts)} field(s)")
            return Processed(Outcome.NO_RESULT, IDENTITY_CONFLICT, conflicts, timings=timings, peak_gib=peaks)
        selection: Selection = select_series(summaries, config.selection)
    if selection.series is None:
        return Processed(Outcome.NO_RESULT, NO_ARTERIAL, selection.reasons, timings=timings, peak_gib=peaks)
    reasons = list(selection.reasons)
    series = None
    with _timed(timings, peaks, "load"):
        for candidate in [selection.series, *selection.fallbacks]:
            try:
                series = load_series(list(candidate.files), headers=candidate.headers)
                series_uid = candidate.series_uid
                break
            except SeriesError as exc:
                log.warning("series %s refused: %s", candidate.series_uid, exc)
                reasons.append(f"series {candidate.description or candidate.series_uid} refused: {exc}")
    if series is None:
        return Processed(Outcome.NO_RESULT, "arterial series refused", reasons, selection.series.series_uid, timings=timings, peak_gib=peaks)
    with _timed(timings, peaks, "segment"):
        segmentation = segmenter.segment(series)
    reasons += segmentation.notes
    with _timed(timings, peaks, "measure"):
        measurements = measure(series, segmentation)
    del segmentation  # its labels over the whole grid: the kidneys' masks are in the measurements
    if not measurements.kidneys:
        return Processed(
            Outcome.NO_RESULT, "no kidney found in the series", reasons + measurements.notes, series_uid, measurements, timings=timings, peak_gib=peaks
        )
    with _timed(timings, peaks, "qc"):
        report = check(measurements, selection.image_phase(series_uid), config.qc)
    reasons += report.lines() + [str(note) for note in report.notes]
    allowed = (Structure.PARENCHYMA,) if selection.parenchyma_only else STRUCTURES
    plan = decide(measurements, report, allowed, config.qc, selection.verdict)
    reasons += plan.lines()
    passed = plan.structures if plan.delivered and not plan.review else tuple(s for s in allowed if report.passed_for((s,)))
    if not plan.delivered:
        log.warning("QC failed (%s): %s", config.qc.on_fail.value, "; ".join(report.lines()))
        measured = history_entry(series, series_uid, measurements, report, passed, (), WITHHELD, timings)
        return Processed(
            Outcome.NO_RESULT, WITHHELD, reasons, series_uid, measurements, qc=report, timings=timings, peak_gib=peaks, measured=measured, plan=plan
        )
    measured = history_entry(series, series_uid, measurements, report, passed, plan.structures, "", timings, plan)
    followup = compare(measured, priors(measured.patient), tuple(s for s in plan.structures if s in passed))
    formats = {output for output in WRITERS if config.wants(output)}  # and the SEG and SR always (write_results)
    if not formats & NEEDS_PIXELS:  # the other writers need the headers and the kidneys' masks only: the volume is freed first
        series = replace(series, hu=np.empty((0, 0, 0), series.hu.dtype))
    with _timed(timings, peaks, "write"):
        results = write_results(series, measurements, report, plan, segmenter.model, formats, uids, followup)
    verdict = _verdict(selection.verdict, report, plan)
    if plan.absent:
        log.info("not reported: %s", "; ".join(plan.lines()))
    measured = replace(measured, verdict=verdict, timings=dict(timings))
    return Processed(
        Outcome.RESULT, verdict, reasons, series_uid, measurements, results, qc=report, timings=timings, peak_gib=peaks,
        structures=plan.structures, measured=measured, followup=followup, plan=plan,
    )  # fmt: skip


def _verdict(selected: str, report: QCReport, plan: ReportPlan) -> str:
    """The job's verdict on a study with results: the selection's, and what of it is not reported, or the QC verdict
    where what is sent is for review."""
    if plan.review:
        return f"{selected}; {report.verdict}"
    if plan.structures == (Structure.PARENCHYMA,) and plan.both_kidneys:
        return f"{selected}; {PARENCHYMA_ONLY}"
    parts = [selected]
    for side in SIDES:
        absent = [a for a in plan.absent if a.side == side]
        if side not in plan.sides and absent:
            why = next((a for a in absent if Structure.PARENCHYMA in a.structures), absent[0])
            parts.append(f"{side} kidney not reported ({why.reason.value})")
        elif absent:
            parts.append(f"{side} renal {' and '.join(s for a in absent for s in a.structures)} not reported")
    return "; ".join(parts)


def history_entry(
    series: LoadedSeries,
    series_uid: str,
    measurements: Measurements,
    report: QCReport,
    passed: tuple[str, ...],
    sent: tuple[str, ...],
    verdict: str,
    timings: dict[str, float],
    plan: ReportPlan | None = None,
) -> HistoryEntry:
    """The study's row of the measurement history: its patient, study and series, every volume per side (as the SR
    rounds them; with a ``plan`` that delivers, those delivered only, so that a side withheld is never compared
    later), the structures whose QC passed (of those the series can give) and those sent."""
    ds = series.datasets[0]
    return HistoryEntry(
        patient=Patient(str(ds.get("PatientID", "") or ""), str(ds.get("IssuerOfPatientID", "") or "")),
        study_uid=str(ds.StudyInstanceUID),
        study_date=str(ds.get("StudyDate", "") or ""),
        series_uid=series_uid,
        volumes={
            (structure, side): round(k.volume(structure), 3)
            for side, k in measurements.kidneys.items()
            for structure in STRUCTURES
            if plan is None or plan.delivers(structure, side)
        },
        qc_passed=passed,
        qc_findings=tuple(report.lines()),
        sent=sent,
        algorithms={structure: (a.name, a.version) for structure, a in measurements.algorithms.items()},
        verdict=verdict,
        left_split=None if measurements.left_split is None or (plan is not None and not plan.both_kidneys) else round(measurements.left_split, 4),
        ranges={
            (structure, side): (round(low, 3), round(high, 3))
            for side, k in measurements.kidneys.items()
            for structure, (low, high) in k.ranges.items()
            if plan is None or plan.delivers(structure, side)
        },
        timings=dict(timings),
    )


def failed(exc: BaseException) -> Processed:
    """The outcome of a stage that raised unexpectedly."""
    return Processed(Outcome.FAILED, "processing failed", [], error=f"{type(exc).__name__}: {exc}")
