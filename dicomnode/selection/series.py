"""Select stage: pick the arterial (corticomedullary) phase series of a study, with the reasons for the verdict."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import CTImageStorage

from dicomnode.config import SelectionRules
from dicomnode.imaging.aorta import AortaEvidence, ImagePhase, aorta_evidence
from dicomnode.imaging.load import read_header
from dicomnode.instance import Instance

log = logging.getLogger(__name__)

SELECTED, NO_ARTERIAL = "arterial series selected", "no arterial series"
PARENCHYMA_SERIES = "no arterial series: another series selected for renal parenchyma only"


@dataclass(frozen=True)
class SeriesSummary:
    """What the headers of one series say."""

    series_uid: str
    series_number: int | None
    modality: str
    sop_classes: frozenset[str]
    description: str
    protocol: str
    image_type: tuple[str, ...]
    contrast_agent: str
    bolus_start: dt.time | None
    acquisition_time: dt.time | None
    normal_z: float  # |z component| of the slice normal: 1 for axial
    slice_mm: float | None  # SliceThickness
    slices: int
    files: tuple[Path, ...]  # in the order of InstanceNumber where present
    patients: frozenset[tuple[str, str, str]] = frozenset()  # (PatientID, PatientName, PatientBirthDate) seen
    headers: tuple[pydicom.Dataset, ...] = field(default=(), compare=False, repr=False)  # of files, pixel data unread


@dataclass(frozen=True)
class Candidate:
    """A series weighed by the rules: eligible or not, its score and why."""

    series_uid: str
    description: str
    eligible: bool
    score: float
    reasons: tuple[str, ...]
    image_phase: ImagePhase = ImagePhase.UNKNOWN  # what the aorta says, where it was checked


@dataclass(frozen=True)
class Selection:
    """The verdict for a study: the chosen series (or none), and the evidence."""

    series: SeriesSummary | None
    verdict: str
    reasons: list[str]
    candidates: list[Candidate] = field(default_factory=list)
    fallbacks: list[SeriesSummary] = field(default_factory=list)  # next-best arterial candidates, best first
    parenchyma_only: bool = False  # no arterial series: the best other one, for parenchyma volumes only

    def image_phase(self, series_uid: str) -> ImagePhase:
        """What the image check said of one series (UNKNOWN where it was not checked)."""
        return next((c.image_phase for c in self.candidates if c.series_uid == series_uid), ImagePhase.UNKNOWN)


def summarise(instances: list[Instance]) -> list[SeriesSummary]:
    """Read the headers of a study's instances, grouped by series; unreadable files are skipped with a log line.
    Each header is kept with its pixel data left unread (``read_header``), so that the load stage reads only that."""
    by_series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    for instance in instances:
        try:
            ds = read_header(instance.path)
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            log.warning("skipping unreadable %s: %s", instance.path, exc)
            continue
        by_series[instance.series_uid].append((instance.path, ds))
    return [_summary(uid, members) for uid, members in by_series.items()]


def _summary(series_uid: str, members: list[tuple[Path, pydicom.Dataset]]) -> SeriesSummary:
    first = members[0][1]
    orientation = [float(v) for v in getattr(first, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0]) or [1, 0, 0, 0, 1, 0]]
    normal = np.cross(orientation[:3], orientation[3:])
    number = getattr(first, "SeriesNumber", None)
    members = sorted(members, key=lambda m: int(m[1].get("InstanceNumber", 0) or 0))
    return SeriesSummary(
        series_uid=series_uid,
        series_number=int(number) if number not in (None, "") else None,
        modality=str(getattr(first, "Modality", "")),
        sop_classes=frozenset(str(ds.SOPClassUID) for _, ds in members if "SOPClassUID" in ds),
        description=str(getattr(first, "SeriesDescription", "")),
        protocol=str(getattr(first, "ProtocolName", "")),
        image_type=tuple(str(v).upper() for v in (getattr(first, "ImageType", None) or ())),
        contrast_agent=str(getattr(first, "ContrastBolusAgent", "") or ""),
        bolus_start=_time(getattr(first, "ContrastBolusStartTime", None)),
        acquisition_time=_time(getattr(first, "AcquisitionTime", None) or getattr(first, "SeriesTime", None)),
        normal_z=float(abs(normal[2]) / (np.linalg.norm(normal) or 1.0)),
        slice_mm=float(first.SliceThickness) if str(first.get("SliceThickness", "") or "").strip() else None,
        slices=len(members),
        files=tuple(path for path, _ in members),
        headers=tuple(ds for _, ds in members),
        patients=frozenset(
            (str(ds.get("PatientID", "") or ""), str(ds.get("PatientName", "") or ""), str(ds.get("PatientBirthDate", "") or "")) for _, ds in members
        ),
    )


PATIENT_FIELDS = ("PatientID", "PatientName", "PatientBirthDate")


def patient_conflicts(summaries: list[SeriesSummary]) -> list[str]:
    """Reasons, naming the series, where the study's instances disagree on a patient's ID, name or birth date.

    An empty value agrees with any other; two different non-empty values are a conflict.
    """
    reasons = []
    for index, name in enumerate(PATIENT_FIELDS):
        seen: dict[str, list[str]] = defaultdict(list)
        for summary in summaries:
            for value in {p[index] for p in summary.patients if p[index]}:
                seen[value].append(summary.description or summary.series_uid)
        if len(seen) > 1:
            reasons.append(f"{name} differs: " + "; ".join(f"{len(v)} value(s) in series {', '.join(sorted(set(s)))}" for v, s in seen.items()))
    return reasons


def _time(value: object) -> dt.time | None:
    text = str(value or "").strip()
    match = re.match(r"^(\d{2})(\d{2})?(\d{2})?", text.replace(":", ""))
    if not match:
        return None
    h, m, s = (int(g) if g else 0 for g in match.groups())
    return dt.time(h, m, s) if h < 24 and m < 60 and s < 60 else None


def _seconds(t: dt.time) -> float:
    return t.hour * 3600 + t.minute * 60 + t.second


def _matches(text: str, keywords: tuple[str, ...]) -> list[str]:
    """Keywords found in ``text``: whole words for Latin keywords, substrings for CJK ones."""
    lowered = text.lower()
    found = []
    for keyword in keywords:
        key = keyword.lower()
        if key.isascii():
            if re.search(rf"(?<![a-z]){re.escape(key)}(?![a-z])", lowered):
                found.append(keyword)
        elif key in lowered:
            found.append(keyword)
    return found


def weigh(series: SeriesSummary, rules: SelectionRules, earliest_contrast: set[str], aorta: AortaEvidence | None) -> Candidate:
    """Score one series: exclusions first, then tag evidence, then image evidence (aorta HU) for the arterial phase."""
    reasons: list[str] = []
    excluded = []
    if series.modality != "CT":
        excluded.append(f"modality {series.modality or 'missing'}, not CT")
    if series.sop_classes and series.sop_classes != {CTImageStorage}:
        excluded.append("not (only) CT Image Storage instances")
    if series.image_type and series.image_type[0] != "ORIGINAL":
        excluded.append(f"image type {'/'.join(series.image_type)} is not ORIGINAL")
    if "LOCALIZER" in series.image_type:
        excluded.append("localizer (scout)")
    if series.normal_z < 0.9:
        excluded.append("not axial")
    if series.slices < rules.min_slices:
        excluded.append(f"{series.slices} slices, fewer than {rules.min_slices}")
    text = f"{series.description} {series.protocol}"
    arterial_words = _matches(text, rules.arterial_keywords)
    other_words = _matches(text, rules.other_phase_keywords)
    score = 0.0
    if arterial_words:
        score += 3
        reasons.append(f"description names the arterial phase ({', '.join(arterial_words)})")
    if other_words:
        score -= 3
        reasons.append(f"description names another phase ({', '.join(other_words)})")
    if series.contrast_agent:
        reasons.append(f"contrast agent {series.contrast_agent!r}")
    elif not arterial_words:
        score -= 2
        reasons.append("no contrast agent recorded")
    if series.bolus_start and series.acquisition_time:
        delay = (_seconds(series.acquisition_time) - _seconds(series.bolus_start)) % 86400
        low, high = rules.arterial_window_s
        if low <= delay <= high:
            score += 2
            reasons.append(f"acquired {delay:.0f} s after bolus start, inside the arterial window {low:.0f}-{high:.0f} s")
        else:
            score -= 2
            reasons.append(f"acquired {delay:.0f} s after bolus start, outside the arterial window {low:.0f}-{high:.0f} s")
    if series.series_uid in earliest_contrast:
        score += 1
        reasons.append("from the first contrast acquisition of the study")
    phase = aorta.phase if aorta is not None else ImagePhase.UNKNOWN
    if aorta is not None:
        score += {ImagePhase.ARTERIAL: 3, ImagePhase.ENHANCED: -1, ImagePhase.UNENHANCED: -3, ImagePhase.UNKNOWN: 0}[phase]
        reasons.append(f"image: {aorta.reason}: {phase.value}")
        if arterial_words and phase is ImagePhase.UNENHANCED:
            reasons.append("tags and image disagree: the description says arterial, the aorta is unenhanced")
    eligible = not excluded
    return Candidate(series.series_uid, series.description, eligible, score, tuple(excluded + reasons), phase)


def select_series(summaries: list[SeriesSummary], rules: SelectionRules) -> Selection:
    """Choose the best-scoring eligible series with positive evidence for the arterial phase."""
    if not summaries:
        return Selection(None, NO_ARTERIAL, ["the study holds no readable series"])
    times = {s.series_uid: _seconds(s.acquisition_time) for s in summaries if s.contrast_agent and s.acquisition_time and s.modality == "CT"}
    first_time = min(times.values(), default=None)
    earliest = {uid for uid, seconds in times.items() if seconds == first_time}
    if len(earliest) == len(times):  # one acquisition only: order says nothing
        earliest = set()
    candidates = []
    for summary in summaries:
        eligible_ct = summary.modality == "CT" and summary.normal_z >= 0.9 and summary.slices >= rules.min_slices
        aorta = aorta_evidence(list(summary.files)) if eligible_ct else None
        candidates.append(weigh(summary, rules, earliest, aorta))
    by_uid = {s.series_uid: s for s in summaries}

    def preference(c: Candidate) -> tuple[float, float, int]:
        """Best evidence first; among equals, the reconstruction closest to the preferred slice thickness."""
        thickness = by_uid[c.series_uid].slice_mm
        closeness = -abs(thickness - rules.preferred_slice_mm) if thickness else -99.0
        return (c.score, closeness, by_uid[c.series_uid].slices)

    ranked = sorted((c for c in candidates if c.eligible and c.score > 0), key=preference, reverse=True)
    lines = [f"series {c.description or c.series_uid}: score {c.score:+.0f}; " + "; ".join(c.reasons) for c in candidates]
    if not ranked:
        others = sorted((c for c in candidates if c.eligible), key=preference, reverse=True) if rules.parenchyma_fallback else []
        if not others:
            return Selection(None, NO_ARTERIAL, lines, candidates)
        chosen = by_uid[others[0].series_uid]
        chosen_line = f"selected {chosen.description or chosen.series_uid} for renal parenchyma only (no arterial series)"
        return Selection(chosen, PARENCHYMA_SERIES, [chosen_line] + lines, candidates, [by_uid[c.series_uid] for c in others[1:]], parenchyma_only=True)
    chosen = by_uid[ranked[0].series_uid]
    fallbacks = [by_uid[c.series_uid] for c in ranked[1:]]
    return Selection(chosen, SELECTED, [f"selected {chosen.description or chosen.series_uid}"] + lines, candidates, fallbacks)
