"""A reader's corrected SEG, written by two independent writers (highdicom, and dcmqi's itkimage2segimage, the writer
of 3D Slicer) from s0009's people-corrected kidney masks, reads back as the masks' volumes to 0.1 ml, and its SR names
the reader and passes dciodvfy, dcmqi's tid1500reader and highdicom; a SEG of another patient, study or frame of
reference, off the series' slices, with segments the node cannot identify, or broken, is refused with the reason."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.sr.codedict import codes

from dicomnode.imaging.load import LoadedSeries, load_series
from dicomnode.renal import Side, Structure
from dicomnode.results.codes import KIDNEY, SIDE_CODES
from dicomnode.results.correction import Refusal, read_correction
from dicomnode.results.sr import write_corrected_sr
from tests.peers import SHARED, dciodvfy
from training.volume_dicom import SeriesTags, write_volume_series

S0009 = SHARED / "data" / "real_ct2" / "s0009"
pytestmark = pytest.mark.skipif(not S0009.exists(), reason="shared real CT s0009 not present")
ITKIMAGE2SEGIMAGE = Path(sys.executable).parent / "itkimage2segimage"
TID1500READER = Path(sys.executable).parent / "tid1500reader"


@pytest.fixture(scope="module")
def s0009(tmp_path_factory) -> tuple[LoadedSeries, Path, dict[Side, np.ndarray]]:
    folder = tmp_path_factory.mktemp("s0009")
    series = load_series(write_volume_series(sitk.ReadImage(str(S0009 / "ct.nii.gz")), folder, SeriesTags(patient_id="S0009", study_seed="s0009")))
    masks = {side: sitk.GetArrayFromImage(sitk.ReadImage(str(S0009 / f"kidney_{side}.nii.gz"))) > 0 for side in Side}
    return series, folder, masks


def _expected(series: LoadedSeries, masks: dict[Side, np.ndarray]) -> dict[tuple[Structure, Side], float]:
    return {(Structure.PARENCHYMA, side): float(mask.sum()) * series.voxel_ml for side, mask in masks.items()}


def _highdicom_seg(series: LoadedSeries, masks: dict[Side, np.ndarray], kind: hd.sr.CodedConcept | None = None) -> pydicom.Dataset:
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


def test_a_highdicom_seg_of_the_corrected_masks_reads_back_as_their_volumes(s0009) -> None:
    series, _, masks = s0009
    correction = read_correction(_highdicom_seg(series, masks), series)
    expected = _expected(series, masks)
    assert correction.volumes_ml.keys() == expected.keys()
    assert all(abs(correction.volumes_ml[key] - ml) < 0.1 for key, ml in expected.items()), (correction.volumes_ml, expected)
    assert correction.reader == "Reader^Renal"
    assert all(np.array_equal(correction.masks[(Structure.PARENCHYMA, side)], masks[side]) for side in Side)


@pytest.mark.skipif(not ITKIMAGE2SEGIMAGE.exists(), reason="dcmqi not installed")
def test_a_dcmqi_seg_of_the_corrected_masks_reads_back_as_their_volumes(s0009, tmp_path: Path) -> None:
    series, folder, masks = s0009
    reference = sitk.ReadImage(str(S0009 / "ct.nii.gz"))
    labels = sitk.GetImageFromArray((masks[Side.LEFT] * 1 + masks[Side.RIGHT] * 2).astype(np.uint8))
    labels.CopyInformation(reference)
    sitk.WriteImage(labels, str(tmp_path / "labels.nii.gz"))

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
    (tmp_path / "meta.json").write_text(json.dumps(metadata))
    run = subprocess.run(
        [str(ITKIMAGE2SEGIMAGE), "--inputImageList", str(tmp_path / "labels.nii.gz"), "--inputDICOMDirectory", str(folder),
         "--inputMetadata", str(tmp_path / "meta.json"), "--outputDICOM", str(tmp_path / "seg.dcm")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    correction = read_correction(pydicom.dcmread(tmp_path / "seg.dcm"), series)
    expected = _expected(series, masks)
    assert correction.volumes_ml.keys() == expected.keys()
    assert all(abs(correction.volumes_ml[key] - ml) < 0.1 for key, ml in expected.items()), (correction.volumes_ml, expected)
    assert correction.reader == "Reader^Slicer"


def _refusal(seg: pydicom.Dataset, series: LoadedSeries, **labels: tuple[Structure, Side]) -> Refusal:
    with pytest.raises(ValueError) as caught:
        read_correction(seg, series, labels)
    return caught.value.refusal  # type: ignore[attr-defined]


def test_a_seg_that_does_not_fit_the_measured_series_is_refused_with_the_reason(s0009) -> None:
    series, _, masks = s0009
    good = _highdicom_seg(series, masks)

    def changed(**values: object) -> pydicom.Dataset:
        seg = copy.deepcopy(good)
        for keyword, value in values.items():
            setattr(seg, keyword, value)
        return seg

    assert _refusal(changed(PatientID="SOMEONE-ELSE"), series) is Refusal.PATIENT
    assert _refusal(changed(StudyInstanceUID=hd.UID()), series) is Refusal.STUDY
    assert _refusal(changed(FrameOfReferenceUID=hd.UID()), series) is Refusal.FRAME_OF_REFERENCE
    assert _refusal(changed(SOPClassUID="1.2.840.10008.5.1.4.1.1.2"), series) is Refusal.NOT_SEG

    shifted = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_encoded(good)))
    position = shifted.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    position.ImagePositionPatient = [float(v) + (0.75 if axis == 2 else 0.0) for axis, v in enumerate(position.ImagePositionPatient)]  # half a slice
    assert _refusal(shifted, series) is Refusal.GEOMETRY
    coarser = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_encoded(good)))
    coarser.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = [2 * float(v) for v in series.datasets[0].PixelSpacing]
    assert _refusal(coarser, series) is Refusal.GEOMETRY

    liver = _highdicom_seg(series, masks, kind=codes.SCT.Liver)
    assert _refusal(liver, series) is Refusal.SEGMENTS
    mapped = read_correction(liver, series, {"left kidney": (Structure.PARENCHYMA, Side.LEFT), "right kidney": (Structure.PARENCHYMA, Side.RIGHT)})
    assert mapped.volumes_ml.keys() == _expected(series, masks).keys()  # a site's label mapping identifies them

    broken = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_encoded(good)))
    del broken.SegmentSequence
    assert _refusal(broken, series) is Refusal.BROKEN


def _encoded(seg: pydicom.Dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_the_sr_of_a_correction_names_the_reader_and_passes_dciodvfy_dcmqi_and_highdicom(s0009, tmp_path: Path) -> None:
    series, _, masks = s0009
    seg = _highdicom_seg(series, masks)
    correction = read_correction(seg, series)
    sr = write_corrected_sr(series, correction, seg)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy(path) == []
    # dcmqi's reader (3D Slicer's) finds one group per kidney, with the masks' volume in cm3
    out = tmp_path / "sr.json"
    run = subprocess.run([str(TID1500READER), "--inputDICOM", str(path), "--outputMetadata", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    read = {g["TrackingIdentifier"]: float(g["measurementItems"][0]["value"]) for g in json.loads(out.read_text())["Measurements"] if g.get("measurementItems")}
    assert read == pytest.approx({f"{side} renal parenchyma": ml for (_, side), ml in _expected(series, masks).items()}, abs=0.1)
    # highdicom reads the reader as the observer, and the groups reference the reader's segments
    parsed = hd.sr.srread(path)
    observer = parsed.content.get_observer_contexts(observer_type=codes.DCM.Person)
    assert [str(o.observer_identifying_attributes[0].value) for o in observer] == ["Reader^Renal"]
    groups = parsed.content.get_volumetric_roi_measurement_groups()
    assert {g.referenced_segment.referenced_sop_instance_uid for g in groups} == {seg.SOPInstanceUID}
    assert sr.SeriesDescription == "Renal volumes (reader-corrected)"
