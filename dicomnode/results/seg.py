"""The DICOM-SEG of the renal masks: one BINARY segment per structure sent and side found."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr.coding import CodedConcept
from pydicom.sr.codedict import codes

from dicomnode import __version__
from dicomnode.analysis.measure import Measurements
from dicomnode.base.uids import RANDOM_UIDS, ResultUids
from dicomnode.imaging.load import LoadedSeries
from dicomnode.renal import SIDES, Side, Structure
from dicomnode.results.codes import (
    ANATOMICAL_STRUCTURE,
    DISPLAY_LAB,
    KIDNEY,
    SIDE_CODES,
    STRUCTURE_CODES,
)
from dicomnode.results.equipment import MANUFACTURER, QC_REVIEW_SUFFIX, contributing_equipment
from dicomnode.segment.model import Algorithm, Model

#: SEG segments, in order: cortex and medulla per side (DESIGN), then parenchyma per side for the SR groups.
SEGMENT_ORDER = [(s, side) for s in (Structure.CORTEX, Structure.MEDULLA, Structure.PARENCHYMA) for side in SIDES]
SEG_SERIES_NUMBER = 9701
SEG_DESCRIPTION = "Renal segmentation (research)"


def _algorithm(algorithm: Algorithm) -> hd.AlgorithmIdentificationSequence:
    """A segment's algorithm (PS3.3 C.8.20.2, one item: the method that made the structure; its parameters name the
    parenchyma's source where another model made it)."""
    return hd.AlgorithmIdentificationSequence(
        name=algorithm.name,
        family=codes.cid7162.ArtificialIntelligence,
        version=algorithm.version or __version__,
        source=MANUFACTURER,
        parameters={"input": algorithm.parameters} if algorithm.parameters else None,
    )


def write_seg(
    series: LoadedSeries,
    measurements: Measurements,
    model: Model,
    tracking: dict[tuple[Structure, Side], str],
    slices: np.ndarray,
    review: bool = False,
    uids: ResultUids = RANDOM_UIDS,
) -> pydicom.Dataset:
    """A BINARY SEG with one segment per structure and side in ``tracking`` (those sent and found), derived from the
    series' ``slices`` (those the kidneys lie on, ``measured_slices``); :func:`segment_numbers` reads its numbering back."""
    descriptions: list[hd.seg.SegmentDescription] = []
    on = np.flatnonzero(slices)
    # the SEG's slices only; one plane per segment in memory (highdicom takes the segments as the last axis, a view
    # here), so that its checks across segments and each segment's frames read whole planes
    planes = np.zeros((len(tracking), on.size, int(series.datasets[0].Rows), int(series.datasets[0].Columns)), np.uint8)
    position = np.cumsum(slices) - 1  # of each series slice among the SEG's
    for structure, side in SEGMENT_ORDER:
        kidney = measurements.kidneys.get(side)
        if kidney is None or (structure, side) not in tracking:
            continue
        number = len(descriptions) + 1
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=f"{side.capitalize()} renal {structure}",
            segmented_property_category=ANATOMICAL_STRUCTURE,
            segmented_property_type=STRUCTURE_CODES[structure],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=_algorithm(measurements.algorithms[structure]),
            tracking_uid=tracking[(structure, side)],
            tracking_id=f"{side} renal {structure}",
            anatomic_regions=[KIDNEY],
            display_color=hd.color.CIELabColor(*DISPLAY_LAB[(structure, side)]),
        )
        modifier = [CodedConcept.from_code(SIDE_CODES[side])]
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = modifier
        description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = modifier
        descriptions.append(description)
        z, rows, columns = kidney.box
        picked = slices[z]
        planes[number - 1, position[z][picked], rows, columns] = kidney.mask_in_box(structure)[picked]
    seg = hd.seg.Segmentation(
        source_images=[ds for ds, on in zip(series.datasets, slices) if on],
        pixel_array=np.moveaxis(planes[: len(descriptions)], 0, -1),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=uids.uid("seg/series"),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=uids.uid("seg"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=model.name,
        software_versions=__version__,
        device_serial_number="1",
        content_label="KIDNEYS",
        content_description="Renal cortex, medulla and parenchyma" if any(s == Structure.CORTEX for s, _ in tracking) else "Renal parenchyma",
        series_description=SEG_DESCRIPTION + (QC_REVIEW_SUFFIX if review else ""),
        contributing_equipment=contributing_equipment(measurements),
    )
    return seg


def segment_numbers(seg: pydicom.Dataset) -> dict[tuple[Structure, Side], int]:
    """Each structure and side's segment number in a SEG :func:`write_seg` made, read from its Tracking IDs."""
    numbers = {}
    for item in seg.SegmentSequence:
        side, _, structure = str(item.TrackingID).partition(" renal ")
        numbers[(Structure(structure), Side(side))] = int(item.SegmentNumber)
    return numbers
