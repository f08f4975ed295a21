"""A reader's corrected segmentation: a DICOM SEG that a viewer (OHIF, 3D Slicer) saved to the PACS after a radiologist
fixed an outline, checked against the series the node measured, and the volume of each renal structure and side it
holds. A SEG that fails a check is refused with the reason, and nothing of it is kept as a correction.

Segments are identified as the node's own SEG types them (``seg.py``): Segmented Property Type Kidney (renal
parenchyma), Renal cortex or Renal medulla (``codes.py``), with a Left or Right modifier on the type or on the
anatomic region; or, for a viewer that writes other codes, by Segment Label (case aside): the node's own labels
("Left renal cortex") and those of a mapping the site configures.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
from pynetdicom.sop_class import SegmentationStorage

from dicomnode.imaging.load import LoadedSeries
from dicomnode.renal import SIDES, STRUCTURES, Side, Structure
from dicomnode.results.codes import SIDE_CODES, STRUCTURE_CODES

#: How far (mm) a frame's position may lie from a slice of the series and still be that slice: DS values carry at
#: most 16 characters, so a viewer's positions differ from the CT's in their last digits.
POSITION_TOLERANCE_MM = 0.05
#: How far the SEG's row and column direction cosines and pixel spacing (relative) may differ from the series'.
DIRECTION_TOLERANCE, SPACING_TOLERANCE = 1e-3, 1e-3


#: The Segment Labels of the node's own SEG ("Left renal cortex"), lower case: a viewer that keeps a segment's label
#: and not its codes still names it.
NODE_LABELS = {f"{side} renal {structure}": (Structure(structure), Side(side)) for structure in STRUCTURES for side in SIDES}


class Refusal(str, enum.Enum):
    """Why a SEG is not taken as a correction of a result."""

    NOT_SEG = "not a Segmentation"
    PATIENT = "another patient"
    STUDY = "another study"
    FRAME_OF_REFERENCE = "another frame of reference"
    GEOMETRY = "its frames do not lie on the measured series' slices"
    SEGMENTS = "segments that are not a renal structure with a side"
    BROKEN = "a data set that cannot be read as a SEG"


class CorrectionError(ValueError):
    """A SEG refused as a correction: ``refusal`` says what is wrong, the message says where."""

    def __init__(self, refusal: Refusal, detail: str) -> None:
        super().__init__(f"{refusal.value}: {detail}")
        self.refusal = refusal


@dataclass(frozen=True)
class Correction:
    """A reader's SEG of the measured series: its masks on the series' grid (slice, row, column) and their volumes."""

    sop_uid: str
    reader: str  # Content Creator's Name, else Operators' Name; "" where the SEG names no one
    created: str  # Content Date and Time, YYYYMMDDHHMMSS as far as given
    masks: dict[tuple[Structure, Side], np.ndarray]
    voxel_ml: float
    numbers: dict[tuple[Structure, Side], int]  # each structure and side's segment number in the reader's SEG

    @property
    def volumes_ml(self) -> dict[tuple[Structure, Side], float]:
        return {key: float(mask.sum()) * self.voxel_ml for key, mask in self.masks.items()}


@dataclass(frozen=True)
class CheckedSeg:
    """A SEG that fits the measured series, before its frames are read: who made it and when, its segments, and the
    series' slice each frame lies on (in the order of the headers it was checked against)."""

    reader: str  # Content Creator's Name, else Operators' Name; "" where the SEG names no one
    created: str  # Content Date and Time, YYYYMMDDHHMMSS as far as given
    segments: dict[int, tuple[Structure, Side]]  # segment number -> structure and side
    slices: list[int]
    numbers: list[int]  # each frame's segment number


def check_correction(seg: pydicom.Dataset, headers: Sequence[pydicom.Dataset], labels: Mapping[str, tuple[Structure, Side]] | None = None) -> CheckedSeg:
    """``seg`` checked as a correction of the series whose slices' ``headers`` are given (the series the node
    measured), without decoding a frame; ``labels`` maps Segment Labels of a viewer that does not code its segments as
    the node does. Raises :class:`CorrectionError` naming what does not fit."""
    source = headers[0]
    if str(seg.get("SOPClassUID", "")) != SegmentationStorage:
        raise CorrectionError(Refusal.NOT_SEG, f"SOP Class {seg.get('SOPClassUID', 'missing')}")
    for keyword, refusal in (("PatientID", Refusal.PATIENT), ("IssuerOfPatientID", Refusal.PATIENT), ("StudyInstanceUID", Refusal.STUDY)):
        if str(seg.get(keyword, "") or "") != str(source.get(keyword, "") or ""):
            raise CorrectionError(refusal, f"{keyword} {seg.get(keyword, '')!r}, the measured series has {source.get(keyword, '')!r}")
    if str(seg.get("FrameOfReferenceUID", "")) != str(source.get("FrameOfReferenceUID", "")):
        raise CorrectionError(Refusal.FRAME_OF_REFERENCE, f"{seg.get('FrameOfReferenceUID', 'none')}, the measured series has {source.FrameOfReferenceUID}")
    try:
        segments = _segments(seg, labels or {})
        slices = _slices(seg, headers)
        numbers = [int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) for item in seg.PerFrameFunctionalGroupsSequence]
        frames = int(seg.get("NumberOfFrames", 1) or 1)
    except CorrectionError:
        raise
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:  # a missing or malformed element
        raise CorrectionError(Refusal.BROKEN, f"{type(exc).__name__}: {exc}") from None
    if not len(numbers) == len(slices) == frames:
        raise CorrectionError(Refusal.BROKEN, f"{frames} frames, {len(numbers)} frame descriptions")
    unknown = sorted(set(numbers) - set(segments))
    if unknown:
        raise CorrectionError(Refusal.BROKEN, f"a frame of segment {unknown[0]}, which the SEG does not describe")
    created = f"{seg.get('ContentDate', '')}{seg.get('ContentTime', '')}".split(".")[0]
    return CheckedSeg(_reader(seg), created, segments, slices, numbers)


def read_correction(seg: pydicom.Dataset, series: LoadedSeries, labels: Mapping[str, tuple[Structure, Side]] | None = None) -> Correction:
    """``seg`` as a correction of ``series`` (the series the node measured), checked by :func:`check_correction`, with
    its masks on the series' grid. Raises :class:`CorrectionError` naming what does not fit."""
    checked = check_correction(seg, series.datasets, labels)
    try:
        frames = _frames(seg)
    except (AttributeError, ValueError) as exc:  # pixel data missing, short or in a syntax that cannot be decoded
        raise CorrectionError(Refusal.BROKEN, f"{type(exc).__name__}: {exc}") from None
    if len(frames) != len(checked.slices):
        raise CorrectionError(Refusal.BROKEN, f"{len(frames)} frames decoded, {len(checked.slices)} frame descriptions")
    masks = {key: np.zeros(series.hu.shape, bool) for key in checked.segments.values()}
    for frame, number, index in zip(frames, checked.numbers, checked.slices, strict=True):
        masks[checked.segments[number]][index] |= frame
    numbers = {key: number for number, key in checked.segments.items()}
    return Correction(str(seg.SOPInstanceUID), checked.reader, checked.created, masks, series.voxel_ml, numbers)


def _reader(seg: pydicom.Dataset) -> str:
    for keyword in ("ContentCreatorName", "OperatorsName"):
        value = seg.get(keyword)
        if value:
            return str(value[0] if isinstance(value, pydicom.multival.MultiValue) else value)
    return ""


def _segments(seg: pydicom.Dataset, labels: Mapping[str, tuple[Structure, Side]]) -> dict[int, tuple[Structure, Side]]:
    """Each segment number's structure and side; CorrectionError for a segment that is neither coded nor mapped, or a
    structure and side two segments claim."""
    named = {**NODE_LABELS, **{label.strip().lower(): key for label, key in labels.items()}}
    structures = {(code.value, code.scheme_designator): Structure(structure) for structure, code in STRUCTURE_CODES.items()}
    sides = {(code.value, code.scheme_designator): Side(side) for side, code in SIDE_CODES.items()}
    found: dict[int, tuple[Structure, Side]] = {}
    for item in seg.SegmentSequence:
        label = str(item.get("SegmentLabel", ""))
        kind = item.SegmentedPropertyTypeCodeSequence[0]
        structure = structures.get((str(kind.CodeValue), str(kind.CodingSchemeDesignator)))
        modifiers = [*kind.get("SegmentedPropertyTypeModifierCodeSequence", [])]
        for region in item.get("AnatomicRegionSequence", []):
            modifiers += [*region.get("AnatomicRegionModifierSequence", [])]
        side = next((sides[key] for m in modifiers if (key := (str(m.CodeValue), str(m.CodingSchemeDesignator))) in sides), None)
        identified = (structure, side) if structure is not None and side is not None else named.get(label.strip().lower())
        if identified is None:
            why = f"segment {item.SegmentNumber} ({label or 'no label'}, {kind.get('CodeMeaning', kind.CodeValue)})"
            raise CorrectionError(Refusal.SEGMENTS, f"{why} is not a renal structure with a side, and no label mapping names it")
        if identified in found.values():
            raise CorrectionError(Refusal.SEGMENTS, f"two segments are the {identified[1]} renal {identified[0]}")
        found[int(item.SegmentNumber)] = identified
    return found


def _functional(seg: pydicom.Dataset, frame: pydicom.Dataset, keyword: str) -> pydicom.Dataset:
    """A functional group's item for a frame: its own, else the shared one."""
    if keyword in frame:
        return frame[keyword].value[0]
    return seg.SharedFunctionalGroupsSequence[0][keyword].value[0]


def _slices(seg: pydicom.Dataset, headers: Sequence[pydicom.Dataset]) -> list[int]:
    """The slice (index into ``headers``) each frame lies on; CorrectionError where a frame's plane, pixel grid or
    spacing differs."""
    source = headers[0]
    if (int(seg.Rows), int(seg.Columns)) != (int(source.Rows), int(source.Columns)):
        raise CorrectionError(Refusal.GEOMETRY, f"frames of {seg.Rows} x {seg.Columns} pixels, slices of {source.Rows} x {source.Columns}")
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in headers])
    orientation, spacing = np.array(source.ImageOrientationPatient, float), np.array(source.PixelSpacing, float)
    slices = []
    for n, frame in enumerate(seg.PerFrameFunctionalGroupsSequence, 1):
        frame_orientation = np.array(_functional(seg, frame, "PlaneOrientationSequence").ImageOrientationPatient, float)
        frame_spacing = np.array(_functional(seg, frame, "PixelMeasuresSequence").PixelSpacing, float)
        if np.abs(frame_orientation - orientation).max() > DIRECTION_TOLERANCE:
            raise CorrectionError(Refusal.GEOMETRY, f"frame {n} is oriented {list(frame_orientation)}, the slices {list(orientation)}")
        if np.abs(frame_spacing / spacing - 1).max() > SPACING_TOLERANCE:
            raise CorrectionError(Refusal.GEOMETRY, f"frame {n} has pixels of {list(frame_spacing)} mm, the slices {list(spacing)} mm")
        position = np.array(_functional(seg, frame, "PlanePositionSequence").ImagePositionPatient, float)
        distances = np.linalg.norm(positions - position, axis=1)
        nearest = int(np.argmin(distances))
        if distances[nearest] > POSITION_TOLERANCE_MM:
            raise CorrectionError(Refusal.GEOMETRY, f"frame {n} at {list(position)} lies {distances[nearest]:.2f} mm from the nearest slice")
        slices.append(nearest)
    return slices


def _frames(seg: pydicom.Dataset) -> np.ndarray:
    """The SEG's frames as booleans (frame, row, column): a BINARY SEG's bits, a FRACTIONAL one at half its maximum."""
    pixels = np.asarray(seg.pixel_array)
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    if str(seg.get("SegmentationType", "")) == "FRACTIONAL":
        return pixels >= float(seg.MaximumFractionalValue) / 2
    return pixels > 0
