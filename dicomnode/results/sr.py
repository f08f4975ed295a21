"""The Comprehensive 3D SR (TID 1500) of the volumes, with QC and follow-up, and the text SR of a study without result."""

from __future__ import annotations

from typing import TypedDict, cast

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicomnode import __version__
from dicomnode.analysis.followup import Change, FollowUp
from dicomnode.analysis.measure import Measurements
from dicomnode.analysis.plan import ReportPlan
from dicomnode.analysis.qc import STUDY, QCReport
from dicomnode.base.uids import RANDOM_UIDS, ResultUids
from dicomnode.imaging.load import LoadedSeries
from dicomnode.renal import Side, Structure
from dicomnode.results.codes import (
    CUBIC_CENTIMETRE,
    CUBIC_CENTIMETRE_PER_YEAR,
    DIFFERENCE_IN_SIZE,
    FINDING,
    KIDNEY,
    MAXIMUM,
    MINIMUM,
    PERCENT,
    PRIOR_STUDY_UID,
    QC_PASSED,
    QC_RESULT,
    QC_REVIEW,
    SIDE_CODES,
    STRUCTURE_CODES,
    STUDY_DATE,
    VOLUME,
)
from dicomnode.results.correction import Correction
from dicomnode.results.equipment import MANUFACTURER, QC_REVIEW_SUFFIX, contributing_equipment
from dicomnode.segment.band import BAND_METHOD
from dicomnode.segment.model import Algorithm, Model

SR_SERIES_NUMBER = 9702
SR_DESCRIPTION = "Renal volumes (research)"


def _sr_algorithm(algorithm: Algorithm) -> hd.sr.AlgorithmIdentification:
    """TID 4019 of a measurement: name, version and parameters of the method that made the structure."""
    parameters = [algorithm.parameters] if algorithm.parameters else None
    return hd.sr.AlgorithmIdentification(name=algorithm.name, version=algorithm.version or __version__, parameters=parameters)


def write_sr(
    series: LoadedSeries,
    measurements: Measurements,
    qc: QCReport,
    plan: ReportPlan,
    seg: pydicom.Dataset,
    numbers: dict[tuple[Structure, Side], int],
    tracking: dict[tuple[Structure, Side], str],
    model: Model,
    slices: np.ndarray,
    uids: ResultUids = RANDOM_UIDS,
    followup: FollowUp | None = None,
) -> pydicom.Dataset:
    """A Comprehensive 3D SR (TID 1500): one TID 1411 group per structure and side the plan delivers, volumes in cm3,
    each with its QC verdict, its side's findings and notes, and with ``followup`` its change since the patient's
    prior result; a TID 1501 group holds the study's QC verdict, what is absent on which side and why (no kidney
    found, cut off by the field of view, withheld with its finding, not measured in this phase), the findings not
    reported with a group, and which earlier results were not compared and why."""
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations] = []
    for (structure, side), number in numbers.items():
        kidney = measurements.kidneys[side]
        algorithm = _sr_algorithm(measurements.algorithms[structure])
        groups.append(
            _volume_group(
                series,
                seg,
                (structure, side, number),
                tracking[(structure, side)],
                [
                    hd.sr.Measurement(name=VOLUME, value=round(kidney.volume(structure), 3), unit=CUBIC_CENTIMETRE, algorithm_id=algorithm),
                    *_range(kidney.ranges.get(structure), algorithm),
                    *_changes(followup.change(structure, side) if followup else None),
                ],
                algorithm,
                [_qc_evaluation(not plan.review and _passed(qc, structure, side))],
            )
        )
        _add_findings(groups[-1], [str(f) for f in qc.for_scope(side) if structure in f.rule.structures] + [str(n) for n in qc.notes if n.scope == side])
    study_group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uids.uid("tracking/qc"), identifier="renal volumetry QC"),
        algorithm_id=_sr_algorithm(measurements.algorithms[Structure.PARENCHYMA]),
        qualitative_evaluations=[_qc_evaluation(not plan.review)],
    )
    unreported = [f for f in qc.findings if f.scope == STUDY or f.scope not in plan.sides]  # e.g. a kidney withheld
    not_compared = [str(n) for n in followup.not_compared] if followup else []
    ranged = any(structure in measurements.kidneys[side].ranges for structure, side in numbers)
    method = [f"Minimum and maximum of each volume: {BAND_METHOD}"] if ranged else []
    _add_findings(study_group, [plan.qc_verdict, *plan.lines(), *(str(f) for f in unreported), *not_compared, *method])
    groups.append(study_group)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=[MANUFACTURER, model.name]), name=MANUFACTURER, model_name=model.name
        ),
    )
    document = _measurement_report(
        series,
        seg,
        hd.sr.ObservationContext(observer_device_context=observer),
        groups,
        SR_DESCRIPTION + (QC_REVIEW_SUFFIX if plan.review else ""),
        _new_sr_instance(uids, "sr"),
        contributing_equipment=contributing_equipment(measurements),
    )
    return _with_image_library(document, [ds for ds, on in zip(series.datasets, slices) if on])


def _with_image_library(document: hd.sr.Comprehensive3DSR, images: list[pydicom.Dataset]) -> pydicom.Dataset:
    """The SR as a plain dataset with the TID 1600 Image Library of ``images`` (the SEG's slices) where TID 1500 puts
    it, before the imaging measurements: the same document as MeasurementReport(referenced_images=...) makes, built
    after the SR instance because the instance copies and searches its whole content tree (some 7,000 items for the
    100 slices a kidney covers at 1 mm), which took most of the SR's time (``benchmarks/end_to_end.py``)."""
    plain = pydicom.Dataset(document)
    plain.file_meta = document.file_meta
    content = pydicom.Sequence(plain.ContentSequence)
    measurements = next(i for i, item in enumerate(content) if item.ConceptNameCodeSequence[0].CodeValue == codes.DCM.ImagingMeasurements.value)
    content[measurements:measurements] = [image_library(images)]
    plain.ContentSequence = content
    return plain


#: The Image Library descriptors (TID 1604) that differ from slice to slice of one series, and their coordinate.
_POSITIONS = {codes.DCM.ImagePositionPatientX.value: 0, codes.DCM.ImagePositionPatientY.value: 1, codes.DCM.ImagePositionPatientZ.value: 2}
_SOURCE = hd.sr.CodedConcept(value="260753009", meaning="Source", scheme_designator="SCT")
#: What the other descriptors of a slice come from: slices equal in these share them.
_KIND = ("SOPClassUID", "FrameOfReferenceUID", "Rows", "Columns", "PixelSpacing", "SliceThickness", "ImageOrientationPatient")


def image_library(images: list[pydicom.Dataset]) -> pydicom.Dataset:
    """The Image Library container (TID 1600) of ``images``, the same content as ``hd.sr.ImageLibrary(images)``
    gives, made faster for slices of one series: highdicom makes 16 descriptors per slice, while here the descriptors
    of the first slice of each kind (SOP class, frame of reference, matrix, spacing, thickness, orientation) are made
    by highdicom once and each later slice of that kind gets only its own
    image position items, made as highdicom makes them; items of equal value are the same objects in memory (the
    file holds a copy in each place). ``test_image_library_is_highdicoms`` compares the two."""
    templates: dict[tuple[str, ...], list[hd.sr.ContentItem]] = {}
    positions: dict[tuple[str, float], hd.sr.ContentItem] = {}
    groups: dict[tuple[str, str | None], list[hd.sr.ContentItem]] = {}  # as highdicom groups them
    for ds in images:
        kind = tuple(str(ds.get(k, "")) for k in _KIND)
        if kind not in templates:
            templates[kind] = cast(list[hd.sr.ContentItem], list(hd.sr.ImageLibraryEntryDescriptors(ds)))  # its items are ContentItems
        descriptors = [_position(item, ds, positions) for item in templates[kind]]
        entry = hd.sr.ImageContentItem(
            name=_SOURCE,
            referenced_sop_instance_uid=ds.SOPInstanceUID,
            referenced_sop_class_uid=ds.SOPClassUID,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
        entry.ContentSequence = hd.sr.ContentSequence(descriptors)
        modality = templates[kind][0].ConceptCodeSequence[0].CodeValue  # the first descriptor: Modality
        groups.setdefault((modality, ds.get("FrameOfReferenceUID")), []).append(entry)
    library = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibrary, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    library.ContentSequence = hd.sr.ContentSequence()
    for entries in groups.values():  # one group per modality and frame of reference, which highdicom names per entry only
        group = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibraryGroup, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        group.ContentSequence = hd.sr.ContentSequence(entries)
        library.ContentSequence.append(group)
    return library


def _position(item: hd.sr.ContentItem, ds: pydicom.Dataset, made: dict[tuple[str, float], hd.sr.ContentItem]) -> hd.sr.ContentItem:
    """``item`` (a descriptor of a slice of the same kind as ``ds``), or, where it is an image position, that
    position of ``ds`` (one item per value, kept in ``made``)."""
    code = item.ConceptNameCodeSequence[0].CodeValue
    if code not in _POSITIONS:
        return item
    value = ds.ImagePositionPatient[_POSITIONS[code]]
    key = (code, float(value))
    if key not in made:
        name = next(c for c in (codes.DCM.ImagePositionPatientX, codes.DCM.ImagePositionPatientY, codes.DCM.ImagePositionPatientZ) if c.value == code)
        made[key] = hd.sr.NumContentItem(name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT, unit=codes.UCUM.Millimeter)
    return made[key]


def _range(found: tuple[float, float] | None, algorithm: hd.sr.AlgorithmIdentification) -> list[hd.sr.Measurement]:
    """The volume's minimum and maximum (``segment/band.py``), as Volume measurements derived as such."""
    if found is None:
        return []
    return [
        hd.sr.Measurement(name=VOLUME, value=round(value, 3), unit=CUBIC_CENTIMETRE, derivation=derivation, algorithm_id=algorithm)
        for derivation, value in zip((MINIMUM, MAXIMUM), found)
    ]


def _changes(change: Change | None) -> list[hd.sr.Measurement]:
    """A volume's change since its prior as three NUMs "Difference in size" (cm3, %, cm3 per year), each inferred
    from the prior's volume, which names the prior's study and date (codes.py says where each concept comes from)."""
    if change is None:
        return []
    found = []
    for value, unit in ((change.change_ml, CUBIC_CENTIMETRE), (change.change_percent, PERCENT), (change.ml_per_year, CUBIC_CENTIMETRE_PER_YEAR)):
        measurement = hd.sr.Measurement(name=DIFFERENCE_IN_SIZE, value=round(value, 3), unit=unit)
        prior = hd.sr.NumContentItem(name=VOLUME, value=change.prior_ml, unit=CUBIC_CENTIMETRE, relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM)
        prior.ContentSequence = hd.sr.ContentSequence(
            [
                hd.sr.UIDRefContentItem(name=PRIOR_STUDY_UID, value=change.prior_study_uid, relationship_type=hd.sr.RelationshipTypeValues.HAS_OBS_CONTEXT),
                hd.sr.DateContentItem(name=STUDY_DATE, value=change.prior_date, relationship_type=hd.sr.RelationshipTypeValues.HAS_OBS_CONTEXT),
            ]
        )
        if "ContentSequence" in measurement[0]:
            measurement[0].ContentSequence.append(prior)
        else:
            measurement[0].ContentSequence = hd.sr.ContentSequence([prior])
        found.append(measurement)
    return found


def _passed(qc: QCReport, structure: Structure, side: Side) -> bool:
    """Whether no finding on ``side`` or on the whole study concerns ``structure``."""
    return not any(structure in f.rule.structures for f in qc.concerning(side))


def _qc_evaluation(passed: bool) -> hd.sr.QualitativeEvaluation:
    return hd.sr.QualitativeEvaluation(name=QC_RESULT, value=QC_PASSED if passed else QC_REVIEW)


def _add_findings(group: pydicom.Sequence, texts: list[str]) -> None:
    """Append the QC findings as TEXT items (concept "Finding") to a measurement group's content."""
    container = group[0]
    container.ContentSequence.extend(
        hd.sr.TextContentItem(name=FINDING, value=text[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS) for text in texts
    )


#: The series description of an SR of a reader's correction, and the words that say whose the volumes are.
CORRECTED_SR_DESCRIPTION = "Renal volumes (reader-corrected)"
READER_CORRECTED = "Volumes of a reader's corrected segmentation (SEG {sop_uid}), replacing the node's own for this study"


def _volume_group(
    series: LoadedSeries,
    seg: pydicom.Dataset,
    segment: tuple[Structure, Side, int],
    tracking_uid: str,
    measurements: list[hd.sr.Measurement],
    algorithm: hd.sr.AlgorithmIdentification | None = None,
    evaluations: list[hd.sr.QualitativeEvaluation] | None = None,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """The TID 1411 group of one structure and side (``segment``: structure, side, and its number in ``seg``), made
    from ``series``: tracked by ``tracking_uid``, with ``measurements``, the method and the qualitative evaluations."""
    structure, side, number = segment
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=f"{side} renal {structure}"),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=number,
            source_series=hd.sr.SourceSeriesForSegmentation(series.datasets[0].SeriesInstanceUID),
        ),
        finding_type=STRUCTURE_CODES[structure],
        finding_sites=[hd.sr.FindingSite(anatomic_location=KIDNEY, laterality=SIDE_CODES[side])],
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )


def write_corrected_sr(series: LoadedSeries, correction: Correction, seg: pydicom.Dataset, uids: ResultUids = RANDOM_UIDS) -> pydicom.Dataset:
    """A Comprehensive 3D SR (TID 1500) of a reader's correction (``seg``, read as ``correction``): the observer is the
    reader (TID 1003, Person), one TID 1411 group per structure and side gives its volume in cm3 and references the
    reader's segment, and the study group says the volumes are the reader's."""
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations] = []
    volumes = correction.volumes_ml
    for (structure, side), number in sorted(correction.numbers.items()):
        volume = hd.sr.Measurement(name=VOLUME, value=round(volumes[(structure, side)], 3), unit=CUBIC_CENTIMETRE)
        groups.append(_volume_group(series, seg, (structure, side, number), uids.uid(f"corrected/tracking/{structure}/{side}"), [volume]))
    study_group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uids.uid("corrected/tracking/study"), identifier="renal volumetry, reader-corrected"),
    )
    _add_findings(study_group, [READER_CORRECTED.format(sop_uid=correction.sop_uid)])
    groups.append(study_group)
    reader = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=correction.reader or "Unknown^Reader"),
    )
    context = hd.sr.ObservationContext(observer_person_context=reader)
    return _measurement_report(series, seg, context, groups, CORRECTED_SR_DESCRIPTION, _new_sr_instance(uids, f"corrected-sr/{correction.sop_uid}"))


def _measurement_report(
    series: LoadedSeries,
    seg: pydicom.Dataset,
    context: hd.sr.ObservationContext,
    groups: list[hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations],
    description: str,
    identity: _SrIdentity,
    contributing_equipment: list[hd.ContributingEquipment] | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of ``groups`` as observed in ``context``, with the series and the SEG as its evidence."""
    report = hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=groups)
    return hd.sr.Comprehensive3DSR(
        evidence=[*series.datasets, seg], content=report[0], series_description=description, contributing_equipment=contributing_equipment, **identity
    )


def write_no_result_sr(source: pydicom.Dataset, verdict: str, reasons: list[str], uids: ResultUids = RANDOM_UIDS) -> pydicom.Dataset:
    """A Comprehensive SR telling the reader why the study gave no renal volumes (verdict and reasons as text)."""
    container = hd.sr.ContainerContentItem(name=codes.LN.DiagnosticImagingReport, template_id=None)
    container.ContentSequence = pydicom.Sequence(
        [
            hd.sr.TextContentItem(name=FINDING, value=text[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
            for text in [f"No renal volumetry: {verdict}.", *reasons]
        ]
    )
    return hd.sr.ComprehensiveSR(
        evidence=[source], content=container, series_description="Renal volumes: no result (research)", **_new_sr_instance(uids, "text-sr")
    )


class _SrIdentity(TypedDict):
    series_instance_uid: str
    series_number: int
    sop_instance_uid: str
    instance_number: int
    manufacturer: str
    is_complete: bool


def _new_sr_instance(uids: ResultUids, name: str) -> _SrIdentity:
    """Identity of a complete SR instance in a series of the node's."""
    return _SrIdentity(
        series_instance_uid=uids.uid(f"{name}/series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.uid(name),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
    )
