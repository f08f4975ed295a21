"""Readers' corrected SEGs of s0009's people-corrected kidney masks, as two independent writers make them: highdicom
(as a viewer built on it saves a correction) and dcmqi's ``itkimage2segimage`` (3D Slicer's writer)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.sr.codedict import codes

from dicomnode.imaging.load import LoadedSeries, load_series
from dicomnode.renal import Side, Structure
from dicomnode.results.codes import KIDNEY, SIDE_CODES
from tests.peers import SHARED
from training.volume_dicom import SeriesTags, write_volume_series

S0009 = SHARED / "data" / "real_ct2" / "s0009"
ITKIMAGE2SEGIMAGE = Path(sys.executable).parent / "itkimage2segimage"


def s0009_series(folder: Path) -> tuple[LoadedSeries, list[Path], dict[Side, np.ndarray]]:
    """s0009 written as a DICOM series into ``folder``: the series, its files and the people-corrected kidney masks."""
    files = write_volume_series(sitk.ReadImage(str(S0009 / "ct.nii.gz")), folder, SeriesTags(patient_id="S0009", study_seed="s0009"))
    masks = {side: sitk.GetArrayFromImage(sitk.ReadImage(str(S0009 / f"kidney_{side}.nii.gz"))) > 0 for side in Side}
    return load_series(files), files, masks


def expected_volumes(series: LoadedSeries, masks: dict[Side, np.ndarray]) -> dict[tuple[Structure, Side], float]:
    return {(Structure.PARENCHYMA, side): float(mask.sum()) * series.voxel_ml for side, mask in masks.items()}


def highdicom_seg(series: LoadedSeries, masks: dict[Side, np.ndarray], kind: hd.sr.CodedConcept | None = None) -> pydicom.Dataset:
    """The kidneys as a reader's viewer would save them with highdicom: Kidney with a laterality modifier."""
    on = np.flatnonzero(np.any([m.any(axis=(1, 2)) for m in masks.values()], axis=0))
    descriptions = []
    for number, side in enumerate(masks, 1):
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=f"{side} kidney",
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=kind or KIDNEY,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [hd.sr.CodedConcept.from_code(SIDE_CODES[side])]
        descriptions.append(description)
    return hd.seg.Segmentation(
        source_images=[series.datasets[i] for i in on],
        pixel_array=np.stack([masks[side][on] for side in masks], axis=-1).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=300,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="Reader's viewer",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
        content_creator_name="Reader^Renal",
    )


def dcmqi_seg(folder: Path, masks: dict[Side, np.ndarray], work: Path) -> pydicom.Dataset:
    """The kidneys as 3D Slicer saves them (dcmqi's itkimage2segimage), from the series in ``folder``."""
    reference = sitk.ReadImage(str(S0009 / "ct.nii.gz"))
    labels = sitk.GetImageFromArray((masks[Side.LEFT] * 1 + masks[Side.RIGHT] * 2).astype(np.uint8))
    labels.CopyInformation(reference)
    sitk.WriteImage(labels, str(work / "labels.nii.gz"))

    def attributes(label: int, side: Side) -> dict:
        code = SIDE_CODES[side]
        return {
            "labelID": label,
            "SegmentLabel": f"{side} kidney",
            "SegmentAlgorithmType": "MANUAL",
            "SegmentedPropertyCategoryCodeSequence": {"CodeValue": "91723000", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Anatomical Structure"},
            "SegmentedPropertyTypeCodeSequence": {"CodeValue": KIDNEY.value, "CodingSchemeDesignator": "SCT", "CodeMeaning": KIDNEY.meaning},
            "SegmentedPropertyTypeModifierCodeSequence": {"CodeValue": code.value, "CodingSchemeDesignator": "SCT", "CodeMeaning": code.meaning},
        }

    metadata = {
        "ContentCreatorName": "Reader^Slicer",
        "SeriesDescription": "Kidneys corrected",
        "SeriesNumber": "301",
        "InstanceNumber": "1",
        "ClinicalTrialSeriesID": "1",
        "ClinicalTrialTimePointID": "1",
        "BodyPartExamined": "ABDOMEN",
        "segmentAttributes": [[attributes(1, Side.LEFT), attributes(2, Side.RIGHT)]],
    }
    (work / "meta.json").write_text(json.dumps(metadata))
    run = subprocess.run(
        [str(ITKIMAGE2SEGIMAGE), "--inputImageList", str(work / "labels.nii.gz"), "--inputDICOMDirectory", str(folder),
         "--inputMetadata", str(work / "meta.json"), "--outputDICOM", str(work / "seg.dcm")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if run.returncode != 0:
        raise RuntimeError(run.stdout[-2000:] + run.stderr[-2000:])
    return pydicom.dcmread(work / "seg.dcm")


def encoded(seg: pydicom.Dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
