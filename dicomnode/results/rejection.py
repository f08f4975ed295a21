"""Rejection notes: a Key Object Selection document that tells a PACS the node no longer stands by results it sent.

IHE IOCM (Imaging Object Change Management) names the way: a KOS whose document title is a rejection concept of
CID 7010, in the study of the rejected objects, referencing each of them. A later version of a study's result (more
instances came after a run) replaces what an earlier version delivered, or withholds what it sent; the node then
sends such a note for the earlier SEG, SR and SC pages, before the new result. ``read_rejection_note`` reads one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import KeyObjectSelectionDocumentStorage

from dicomnode.base.uids import ResultUids
from dicomnode.results.codes import REJECTED_FOR_QUALITY_REASONS, REJECTION_TITLES
from dicomnode.results.equipment import MANUFACTURER

REJECTION_SERIES_NUMBER = 9704
KEY_OBJECT_DESCRIPTION = codes.DCM.KeyObjectDescription  # DCM 113012, the description item of TID 2010


@dataclass(frozen=True)
class RejectionNote:
    """What a rejection note says: its title (a CID 7010 rejection concept), why, and the instances it rejects."""

    sop_uid: str
    study_uid: str
    title: hd.sr.CodedConcept
    description: str
    rejected: tuple[str, ...]  # SOP Instance UIDs


def write_rejection_note(rejected: Sequence[pydicom.Dataset], description: str, uids: ResultUids, name: str) -> pydicom.Dataset:
    """A KOS, "Rejected for Quality Reasons", referencing every dataset in ``rejected`` (all of one study), with
    ``description`` saying why; ``name`` makes its UIDs unique within the job (one note per destination)."""
    if not rejected:
        raise ValueError("rejected: a rejection note must reference at least one instance")
    studies = {str(ds.StudyInstanceUID) for ds in rejected}
    if len(studies) != 1:
        raise ValueError(f"rejected: the instances belong to {len(studies)} studies; a rejection note covers one")
    content = hd.ko.KeyObjectSelection(
        document_title=REJECTED_FOR_QUALITY_REASONS,
        referenced_objects=list(rejected),
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(uid=uids.uid(f"{name}/device"), manufacturer_name=MANUFACTURER),
        ),
        description=description[:1024],
    )
    return hd.ko.KeyObjectSelectionDocument(
        evidence=list(rejected),
        content=content,
        series_instance_uid=uids.uid(f"{name}/series"),
        series_number=REJECTION_SERIES_NUMBER,
        sop_instance_uid=uids.uid(name),
        instance_number=1,
        manufacturer=MANUFACTURER,
    )


def read_rejection_note(dataset: pydicom.Dataset) -> RejectionNote:
    """The reader of :func:`write_rejection_note`: any KOS whose title is a rejection concept of CID 7010."""
    if str(getattr(dataset, "SOPClassUID", "")) != KeyObjectSelectionDocumentStorage:
        raise ValueError(f"dataset: SOP Class {getattr(dataset, 'SOPClassUID', None)} is not Key Object Selection Document Storage")
    document = hd.ko.KeyObjectSelectionDocument.from_dataset(dataset)
    title = hd.sr.CodedConcept.from_dataset(dataset.ConceptNameCodeSequence[0])
    if title not in REJECTION_TITLES:
        raise ValueError(f"dataset: its title {title.meaning!r} is not a rejection concept")
    descriptions = [
        str(item.TextValue)
        for item in dataset.ContentSequence
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == KEY_OBJECT_DESCRIPTION.value
    ]
    rejected = tuple(str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for item in document.content.get_references())
    return RejectionNote(str(dataset.SOPInstanceUID), str(dataset.StudyInstanceUID), title, " ".join(descriptions), rejected)
