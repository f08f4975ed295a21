"""Write any CT volume (NIfTI, NRRD) as an axial DICOM CT series with made-up header tags and its own geometry.

Used to send real pixels through the node (tests, evaluation): the geometry comes from the image file (origin,
spacing, direction; optionally shifted), the tags say what a scanner would say about the phase.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import generate_uid

from training.phantom_dicom import ct_dataset

_BOLUS_START = dt.datetime(2026, 3, 2, 10, 15, 0)


@dataclass(frozen=True)
class SeriesTags:
    """What the header claims about a series."""

    description: str = "Arterial 3.0"
    protocol: str = "Abdomen"
    seconds_after_bolus: float | None = 30.0  # None: no contrast agent recorded
    patient_id: str = "REALCT"
    study_seed: str = "real-ct"


def write_volume_series(image: sitk.Image, folder: Path, tags: SeriesTags = SeriesTags(), shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> list[Path]:
    """Write ``image`` (HU, any axial direction) as one DICOM file per slice under ``folder``; returns the paths."""
    direction = np.array(image.GetDirection(), float).reshape(3, 3)
    if abs(direction[2, 2]) < 0.99:
        raise ValueError(f"image: not an axial volume (direction {image.GetDirection()})")
    folder.mkdir(parents=True, exist_ok=True)
    hu = np.rint(sitk.GetArrayFromImage(image)).astype(np.int16)
    spacing = image.GetSpacing()
    origin = np.array(image.GetOrigin(), float) + np.array(shift_mm, float)
    study_uid = generate_uid(entropy_srcs=["study", tags.study_seed])
    series_uid = generate_uid(entropy_srcs=["series", tags.study_seed, tags.description, str(shift_mm)])
    frame_uid = generate_uid(entropy_srcs=["frame", tags.study_seed, str(shift_mm)])
    acquired = _BOLUS_START + dt.timedelta(seconds=tags.seconds_after_bolus if tags.seconds_after_bolus is not None else -120.0)
    paths = []
    for k in range(hu.shape[0]):
        position = origin + direction[:, 2] * k * spacing[2]
        sop_uid = generate_uid(entropy_srcs=[series_uid, str(k)])
        ds = _slice_dataset(sop_uid, study_uid, series_uid, frame_uid, tags)
        ds.InstanceNumber = k + 1
        ds.AcquisitionTime = ds.SeriesTime = ds.ContentTime = acquired.strftime("%H%M%S")
        if tags.seconds_after_bolus is not None:
            ds.ContrastBolusAgent = "Iopromide 370"
            ds.ContrastBolusStartTime = _BOLUS_START.strftime("%H%M%S")
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1])]
        ds.SliceLocation = f"{position[2]:.4f}"
        ds.PixelSpacing = [f"{spacing[1]:.4f}", f"{spacing[0]:.4f}"]
        ds.SliceThickness = f"{spacing[2]:.4f}"
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.PixelData = np.ascontiguousarray(hu[k]).astype("<i2").tobytes()
        path = folder / f"{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _slice_dataset(sop_uid: str, study_uid: str, series_uid: str, frame_uid: str, tags: SeriesTags) -> pydicom.Dataset:
    ds = ct_dataset(sop_uid, study_uid, series_uid, frame_uid)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Real^CT", tags.patient_id, "", "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = _BOLUS_START.strftime("%Y%m%d")
    ds.StudyTime = "101000"
    ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "", "1", ""
    ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = "CT", "dicomnode test", "volume_dicom"
    ds.BodyPartExamined = "ABDOMEN"
    ds.SeriesNumber, ds.AcquisitionNumber = 2, 1
    ds.SeriesDescription, ds.ProtocolName = tags.description, tags.protocol
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PositionReferenceIndicator = ""
    ds.KVP = "120"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    return ds
