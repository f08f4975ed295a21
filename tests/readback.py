"""Read results back the way a viewer would: SEG frames onto the source grid, SR measurement groups."""

from __future__ import annotations

from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
import pydicom


@dataclass(frozen=True)
class SrGroup:
    """One TID 1411 group: its tracking identifier, referenced segment and volume."""

    identifier: str
    tracking_uid: str
    segment_number: int
    seg_uid: str
    volume_ml: float
    unit: str
    qc: str  # meaning of the QC qualitative evaluation
    findings: list[str]  # TEXT "Finding" items
    range_ml: dict[str, float] = field(default_factory=dict)  # derived volumes by their derivation's meaning (Minimum, Maximum)


def sr_groups(ds: pydicom.Dataset) -> list[SrGroup]:
    """Measurement groups of a TID 1500 report (the study's QC group has no segment and no volume)."""
    groups = []
    for item in ds.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue != "126010":  # Imaging Measurements
            continue
        for group in item.ContentSequence:
            identifier, uid, segment, seg_uid, volume, unit, qc, findings = "", "", 0, "", float("nan"), "", "", []
            derived: dict[str, float] = {}
            for child in group.ContentSequence:
                code = child.ConceptNameCodeSequence[0].CodeValue
                if code == "112039":  # Tracking Identifier
                    identifier = child.TextValue
                elif code == "112040":  # Tracking Unique Identifier
                    uid = child.UID
                elif child.ValueType == "IMAGE" and "ReferencedSegmentNumber" in child.ReferencedSOPSequence[0]:
                    segment = int(child.ReferencedSOPSequence[0].ReferencedSegmentNumber)
                    seg_uid = child.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                elif child.ValueType == "NUM" and code == "118565006":
                    derivation = [m for m in child.get("ContentSequence", []) if m.ConceptNameCodeSequence[0].CodeValue == "121401"]
                    if derivation:  # TID 300 Derivation: a minimum or maximum, not the volume
                        derived[derivation[0].ConceptCodeSequence[0].CodeMeaning] = float(child.MeasuredValueSequence[0].NumericValue)
                        continue
                    volume = float(child.MeasuredValueSequence[0].NumericValue)
                    unit = child.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue
                elif child.ValueType == "CODE" and code == "111050":  # Quality Assessment
                    qc = child.ConceptCodeSequence[0].CodeMeaning
                elif child.ValueType == "TEXT" and code == "121071":
                    findings.append(child.TextValue)
            groups.append(SrGroup(identifier, uid, segment, seg_uid, volume, unit, qc, findings, derived))
    return groups


def seg_masks(path, source_sop_uids: list[str]) -> dict[int, np.ndarray]:
    """Each segment of a SEG as a boolean volume stacked in the order of ``source_sop_uids``."""
    seg = hd.seg.segread(path)
    numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence]
    volumes = {}
    for number in numbers:
        stack = seg.get_pixels_by_source_instance(source_sop_instance_uids=source_sop_uids, segment_numbers=[number], assert_missing_frames_are_empty=True)
        volumes[number] = stack[..., 0].astype(bool)
    return volumes


def voxel_ml(seg: pydicom.Dataset) -> float:
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    spacing = [float(v) for v in measures.PixelSpacing]
    thickness = float(getattr(measures, "SpacingBetweenSlices", measures.SliceThickness))
    return spacing[0] * spacing[1] * thickness / 1000.0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / total) if total else 1.0


def sr_texts(ds: pydicom.Dataset) -> list[str]:
    """Every TEXT value anywhere in an SR's content tree."""
    texts = []
    for item in ds.get("ContentSequence", []):
        if item.ValueType == "TEXT":
            texts.append(str(item.TextValue))
        texts += sr_texts(item)
    return texts


def sr_volumes(ds: pydicom.Dataset) -> list[float]:
    """Every volume (NUM, SCT 118565006) anywhere in an SR's content tree."""
    volumes = []
    for item in ds.get("ContentSequence", []):
        if item.ValueType == "NUM" and item.ConceptNameCodeSequence[0].CodeValue == "118565006":
            volumes.append(float(item.MeasuredValueSequence[0].NumericValue))
        volumes += sr_volumes(item)
    return volumes


@dataclass(frozen=True)
class SrChange:
    """A volume's change since the prior, read from a TID 1411 group: "Difference in size" in cm3, % and cm3/a,
    each inferred from the prior's volume, which names the prior's study and date."""

    identifier: str  # the group's tracking identifier, e.g. "left renal parenchyma"
    by_unit: dict[str, float]  # "cm3", "%", "cm3/a" -> value
    prior_ml: float
    prior_study_uid: str
    prior_date: str


def sr_changes(ds: pydicom.Dataset) -> dict[str, SrChange]:
    """Each group's change since the prior (groups without one are left out), by tracking identifier."""
    found = {}
    for item in ds.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue != "126010":  # Imaging Measurements
            continue
        for group in item.ContentSequence:
            identifier, by_unit, priors = "", {}, []
            for child in group.ContentSequence:
                code = child.ConceptNameCodeSequence[0].CodeValue
                if code == "112039":
                    identifier = child.TextValue
                elif child.ValueType == "NUM" and code == "442714003":  # SCT Difference in size
                    value = child.MeasuredValueSequence[0]
                    by_unit[value.MeasurementUnitsCodeSequence[0].CodeValue] = float(value.NumericValue)
                    [prior] = child.ContentSequence
                    assert prior.RelationshipType == "INFERRED FROM" and prior.ConceptNameCodeSequence[0].CodeValue == "118565006"
                    context = {c.ConceptNameCodeSequence[0].CodeValue: c for c in prior.ContentSequence}
                    priors.append((float(prior.MeasuredValueSequence[0].NumericValue), context["121018"].UID, context["111060"].Date))
            if by_unit:
                assert len(set(priors)) == 1, f"{identifier}: its changes name different priors"
                found[identifier] = SrChange(identifier, by_unit, *priors[0])
    return found
