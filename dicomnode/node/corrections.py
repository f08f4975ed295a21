"""Readers' corrections through the node: the receiver's check of a SEG sent to it (a correction of a result the node
made, fitting the series it measured?) and the correction job, which runs no model: the volumes of the reader's
masks, a reader-corrected SR for the destinations (with the reader's SEG it references, for a destination that did
not get it from the reader), the history's reader row and a site case for fine-tuning."""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from dicomnode.base.files import save_dataset, write_atomically
from dicomnode.base.uids import ResultUids
from dicomnode.config import NodeConfig
from dicomnode.imaging.load import LoadedSeries, SeriesError, load_series
from dicomnode.intake.receive import Taken
from dicomnode.measured import HistoryEntry, Patient, Source
from dicomnode.net.data_set import Identity, Refusal
from dicomnode.node.export import MIN_KEY_LENGTH
from dicomnode.node.site_cases import Provenance, write_site_case
from dicomnode.options import OutputFormat
from dicomnode.outbound.save import Saved
from dicomnode.renal import SIDES, STRUCTURES, Side, Structure
from dicomnode.results.correction import Correction, CorrectionError, check_correction, read_correction
from dicomnode.results.sr import write_corrected_sr
from dicomnode.store import CorrectionRecord, Job, Store
from dicomnode.store.states import Outcome

log = logging.getLogger(__name__)

#: The job's verdict.
READER_CORRECTED = "reader-corrected"


class CorrectionIntake:
    """The receiver's check of a SEG that is not the node's own (``intake.receive.CorrectionCheck``): None where it is
    no correction (the node measured nothing of its study), else the correction to take or the refusal that says why
    not."""

    def __init__(self, config: NodeConfig, store: Store) -> None:
        self.config, self.store = config, store

    def __call__(self, path: Path, identity: Identity) -> Taken | Refusal | None:
        corrects = self.store.corrected_job(identity.study_uid)
        if corrects is None:
            return None
        why = f"not taken as a correction of job {corrects.id}"
        try:
            headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in measured_files(self.store, corrects)]
            seg = pydicom.dcmread(path)
            checked = check_correction(seg, headers, self.config.corrections.labels)
        except CorrectionError as exc:
            return Refusal(f"{why}: {exc}", f"not a correction: {exc.refusal.name.lower().replace('_', ' ')}")
        except SeriesError as exc:
            return Refusal(f"{why}: the series it measured cannot be read any more: {exc}", "not a correction: measured series gone")
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            return Refusal(f"{why}: the SEG or the measured series cannot be read: {exc}", "not a correction: cannot be read")
        source = headers[0]
        return Taken(corrects, checked.reader, checked.created, Patient(str(source.get("PatientID", "") or ""), str(source.get("IssuerOfPatientID", "") or "")))


def measured_files(store: Store, job: Job) -> list[Path]:
    """The stored files of the series ``job`` measured; SeriesError where none is left (retention deleted them)."""
    files = [i.path for i in store.study_instances(job.study_uid, job.upto_seq) if i.series_uid == job.series_uid]
    if not files:
        raise SeriesError(f"no instance of series {job.series_uid} is stored any more")
    return files


@dataclass(frozen=True)
class CorrectionRun:
    """What a correction job gave: its outcome and record, the reader's history row, and the SR saved."""

    outcome: Outcome
    verdict: str
    reasons: list[str]
    measurements: dict | None
    measured: HistoryEntry | None
    saved: list[Saved]
    error: str | None = None

    def record(self) -> dict[str, object]:
        return {"verdict": self.verdict, "reasons": self.reasons, "measurements": self.measurements, "error": self.error}


def process_correction(job: Job, record: CorrectionRecord, config: NodeConfig, store: Store, folder: Path, uids: ResultUids) -> CorrectionRun:
    """Take the correction ``record`` (job ``job``): the reader-corrected SR saved into ``folder``, the history's reader
    row, the site case; an unexpected error is the job's failure, never the caller's."""
    try:
        return _process(job, record, config, store, folder, uids)
    except (CorrectionError, SeriesError, InvalidDicomError, OSError) as exc:
        log.error("job %d: correction %s not taken: %s", job.id, record.sop_uid, exc)
        return CorrectionRun(Outcome.FAILED, "correction not taken", [str(exc)], None, None, [], f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # a job must never take the node down
        log.exception("job %d failed", job.id)
        return CorrectionRun(Outcome.FAILED, "processing failed", [], None, None, [], f"{type(exc).__name__}: {exc}")


def _process(job: Job, record: CorrectionRecord, config: NodeConfig, store: Store, folder: Path, uids: ResultUids) -> CorrectionRun:
    seg = pydicom.dcmread(record.path)
    series = load_series(measured_files(store, store.job(record.corrects_job)))
    correction = read_correction(seg, series, config.corrections.labels)
    sr = write_corrected_sr(series, correction, seg, uids)
    path = folder / f"SR_{sr.SOPInstanceUID}.dcm"
    save_dataset(path, sr)
    copy = folder / f"SEG_{seg.SOPInstanceUID}.dcm"  # the SR references it: a destination other than the reader's PACS gets it too
    write_atomically(copy, record.path.read_bytes())
    volumes = reader_volumes(correction)
    node = next((e for e in store.history.both_of_study(record.study_uid) if e.source is Source.NODE), None)
    reader = record.reader or "an unnamed reader"
    measured = _history_entry(series, record, volumes)
    reasons = [f"SEG {record.sop_uid} from {record.calling_ae} by {reader}, correcting job {record.corrects_job}"]
    for (structure, side), ml in sorted(volumes.items()):
        before = node.volumes.get((structure, side)) if node is not None else None
        was = f" (the model's {before:.1f} ml, {ml - before:+.1f} ml)" if before is not None else " (the model reported none)"
        reasons.append(f"{side} renal {structure}: {ml:.1f} ml{was}")
    figures: dict[str, object] = {"reader": reader, **{f"{structure}_{side}_ml": round(ml, 1) for (structure, side), ml in sorted(volumes.items())}}
    if config.corrections.site_cases:
        figures.update(_keep_site_case(job, record, config, store, series, correction, volumes, node))
    saved = [Saved(OutputFormat.SEG, str(seg.SOPInstanceUID), copy), Saved(OutputFormat.SR, str(sr.SOPInstanceUID), path)]
    return CorrectionRun(Outcome.RESULT, f"{READER_CORRECTED} by {reader}", reasons, figures, measured, saved)


def _keep_site_case(
    job: Job,
    record: CorrectionRecord,
    config: NodeConfig,
    store: Store,
    series: LoadedSeries,
    correction: Correction,
    volumes: dict[tuple[Structure, Side], float],
    node: HistoryEntry | None,
) -> dict[str, str]:
    """Keep the correction as a site case; the job record's figure naming it, or saying why it could not be kept (the
    reader's SR goes out all the same)."""
    name = f"case_{job.id:06d}"
    ds = series.datasets[0]
    provenance = Provenance(
        reader=record.reader,
        created=record.created,
        corrected_at=dt.datetime.fromtimestamp(record.received_at, dt.UTC).isoformat(timespec="seconds"),
        model=next(iter(node.algorithms.values()), ("", "")) if node is not None else ("", ""),
        identifiers={
            "patient_id": str(ds.get("PatientID", "") or ""),
            "issuer": str(ds.get("IssuerOfPatientID", "") or ""),
            "study_uid": record.study_uid,
            "series_uid": record.series_uid,
            "seg_sop_uid": record.sop_uid,
        },
        volumes_ml={
            "node": {f"{s}_{side}": ml for (s, side), ml in node.volumes.items()} if node is not None else {},
            "reader": {f"{s}_{side}": round(ml, 3) for (s, side), ml in volumes.items()},
        },
        arterial=node is not None and any(s == Structure.CORTEX for s, _ in node.volumes),
        node_sides=tuple(sorted({Side(side) for s, side in node.volumes if s == Structure.PARENCHYMA})) if node is not None else SIDES,
    )
    secret = os.environ.get(config.history.pseudonym_key_env, "")
    key = secret.encode() if len(secret) >= MIN_KEY_LENGTH else None
    try:
        write_site_case(config.path(config.corrections.site_cases), name, series, correction.masks, provenance, key, config.corrections.pseudonymise)
    except (OSError, RuntimeError) as exc:  # SimpleITK raises RuntimeError where it cannot write
        log.error("job %d: the correction's site case could not be kept: %s", job.id, exc)
        return {"site_case_error": str(exc)}
    store.kept_site_case(job.id, name)
    return {"site_case": name}


def reader_volumes(correction: Correction) -> dict[tuple[Structure, Side], float]:
    """The reader's volume of each structure and side, ml: those of the SEG's segments, and the parenchyma of a side
    whose cortex and medulla it gives apart."""
    volumes = dict(correction.volumes_ml)
    for side in SIDES:
        parts = [(Structure.CORTEX, side), (Structure.MEDULLA, side)]
        if (Structure.PARENCHYMA, side) not in volumes and all(p in correction.masks for p in parts):
            volumes[(Structure.PARENCHYMA, side)] = float((correction.masks[parts[0]] | correction.masks[parts[1]]).sum()) * correction.voxel_ml
    return volumes


def _history_entry(series: LoadedSeries, record: CorrectionRecord, volumes: dict[tuple[Structure, Side], float]) -> HistoryEntry:
    ds = series.datasets[0]
    structures = tuple(s for s in STRUCTURES if any(key[0] == s for key in volumes))
    parenchyma = [volumes.get((Structure.PARENCHYMA, side)) for side in SIDES]
    left, right = parenchyma
    return HistoryEntry(
        patient=Patient(str(ds.get("PatientID", "") or ""), str(ds.get("IssuerOfPatientID", "") or "")),
        study_uid=record.study_uid,
        study_date=str(ds.get("StudyDate", "") or ""),
        series_uid=record.series_uid,
        volumes={(str(s), str(side)): round(ml, 3) for (s, side), ml in volumes.items()},
        qc_passed=structures,
        qc_findings=(),
        sent=structures,
        algorithms={},
        verdict=f"{READER_CORRECTED} by {record.reader or 'an unnamed reader'}",
        left_split=round(left / (left + right), 4) if left is not None and right is not None and left + right > 0 else None,
        source=Source.READER,
    )
