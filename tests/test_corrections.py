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
from pydicom.sr.codedict import codes

from dicomnode.imaging.load import LoadedSeries
from dicomnode.renal import Side, Structure
from dicomnode.results.correction import Refusal, read_correction
from dicomnode.results.sr import write_corrected_sr
from tests.peers import dciodvfy
from tests.reader_segs import ITKIMAGE2SEGIMAGE, S0009, dcmqi_seg, encoded, expected_volumes, highdicom_seg, s0009_series

pytestmark = pytest.mark.skipif(not S0009.exists(), reason="shared real CT s0009 not present")
TID1500READER = Path(sys.executable).parent / "tid1500reader"


@pytest.fixture(scope="module")
def s0009(tmp_path_factory) -> tuple[LoadedSeries, Path, dict[Side, np.ndarray]]:
    folder = tmp_path_factory.mktemp("s0009")
    series, _, masks = s0009_series(folder)
    return series, folder, masks


def test_a_highdicom_seg_of_the_corrected_masks_reads_back_as_their_volumes(s0009) -> None:
    series, _, masks = s0009
    correction = read_correction(highdicom_seg(series, masks), series)
    expected = expected_volumes(series, masks)
    assert correction.volumes_ml.keys() == expected.keys()
    assert all(abs(correction.volumes_ml[key] - ml) < 0.1 for key, ml in expected.items()), (correction.volumes_ml, expected)
    assert correction.reader == "Reader^Renal"
    assert all(np.array_equal(correction.masks[(Structure.PARENCHYMA, side)], masks[side]) for side in Side)


@pytest.mark.skipif(not ITKIMAGE2SEGIMAGE.exists(), reason="dcmqi not installed")
def test_a_dcmqi_seg_of_the_corrected_masks_reads_back_as_their_volumes(s0009, tmp_path: Path) -> None:
    series, folder, masks = s0009
    seg = dcmqi_seg(folder, masks, tmp_path)
    correction = read_correction(seg, series)
    expected = expected_volumes(series, masks)
    assert correction.volumes_ml.keys() == expected.keys()
    assert all(abs(correction.volumes_ml[key] - ml) < 0.1 for key, ml in expected.items()), (correction.volumes_ml, expected)
    assert correction.reader == "Reader^Slicer"


def _refusal(seg: pydicom.Dataset, series: LoadedSeries, **labels: tuple[Structure, Side]) -> Refusal:
    with pytest.raises(ValueError) as caught:
        read_correction(seg, series, labels)
    return caught.value.refusal  # type: ignore[attr-defined]


def test_a_seg_that_does_not_fit_the_measured_series_is_refused_with_the_reason(s0009) -> None:
    series, _, masks = s0009
    good = highdicom_seg(series, masks)

    def changed(**values: object) -> pydicom.Dataset:
        seg = copy.deepcopy(good)
        for keyword, value in values.items():
            setattr(seg, keyword, value)
        return seg

    assert _refusal(changed(PatientID="SOMEONE-ELSE"), series) is Refusal.PATIENT
    assert _refusal(changed(StudyInstanceUID=hd.UID()), series) is Refusal.STUDY
    assert _refusal(changed(FrameOfReferenceUID=hd.UID()), series) is Refusal.FRAME_OF_REFERENCE
    assert _refusal(changed(SOPClassUID="1.2.840.10008.5.1.4.1.1.2"), series) is Refusal.NOT_SEG

    shifted = pydicom.dcmread(pydicom.filebase.DicomBytesIO(encoded(good)))
    position = shifted.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    position.ImagePositionPatient = [float(v) + (0.75 if axis == 2 else 0.0) for axis, v in enumerate(position.ImagePositionPatient)]  # half a slice
    assert _refusal(shifted, series) is Refusal.GEOMETRY
    coarser = pydicom.dcmread(pydicom.filebase.DicomBytesIO(encoded(good)))
    coarser.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = [2 * float(v) for v in series.datasets[0].PixelSpacing]
    assert _refusal(coarser, series) is Refusal.GEOMETRY

    liver = highdicom_seg(series, masks, kind=codes.SCT.Liver)
    assert _refusal(liver, series) is Refusal.SEGMENTS
    mapped = read_correction(liver, series, {"Left Kidney": (Structure.PARENCHYMA, Side.LEFT), "right kidney": (Structure.PARENCHYMA, Side.RIGHT)})
    assert mapped.volumes_ml.keys() == expected_volumes(series, masks).keys()  # a site's label mapping identifies them
    relabelled = copy.deepcopy(liver)
    for item in relabelled.SegmentSequence:
        item.SegmentLabel = item.SegmentLabel.replace("kidney", "renal parenchyma").capitalize()  # "Left renal parenchyma"
    assert read_correction(relabelled, series).volumes_ml.keys() == expected_volumes(series, masks).keys()  # the node's own labels

    broken = pydicom.dcmread(pydicom.filebase.DicomBytesIO(encoded(good)))
    del broken.SegmentSequence
    assert _refusal(broken, series) is Refusal.BROKEN


def test_the_sr_of_a_correction_names_the_reader_and_passes_dciodvfy_dcmqi_and_highdicom(s0009, tmp_path: Path) -> None:
    series, _, masks = s0009
    seg = highdicom_seg(series, masks)
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
    assert read == pytest.approx({f"{side} renal parenchyma": ml for (_, side), ml in expected_volumes(series, masks).items()}, abs=0.1)
    # highdicom reads the reader as the observer, and the groups reference the reader's segments
    parsed = hd.sr.srread(path)
    observer = parsed.content.get_observer_contexts(observer_type=codes.DCM.Person)
    assert [str(o.observer_identifying_attributes[0].value) for o in observer] == ["Reader^Renal"]
    groups = parsed.content.get_volumetric_roi_measurement_groups()
    assert {g.referenced_segment.referenced_sop_instance_uid for g in groups} == {seg.SOPInstanceUID}
    assert sr.SeriesDescription == "Renal volumes (reader-corrected)"
