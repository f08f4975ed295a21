"""Write phantoms as DICOM CT series and NIfTI files; multi-phase studies share one anatomy."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from training.phantoms import Grid, Phantom, Phase, draw_anatomy, render

#: Series description, protocol name and seconds after bolus start of each phase.
PHASE_TAGS: dict[Phase, tuple[str, str, float | None]] = {
    Phase.NONCONTRAST: ("ABDOMEN NATIVE 5.0 B30f", "Abdomen plain", None),
    Phase.ARTERIAL: ("ABDOMEN ARTERIAL 5.0 B30f", "Kidney CM phase", 35.0),
    Phase.NEPHROGRAPHIC: ("ABDOMEN VENOUS 5.0 B30f", "Kidney venous", 90.0),
    Phase.DELAYED: ("ABDOMEN DELAYED 5.0 B30f", "Kidney delayed", 300.0),
}
_BOLUS_START = dt.datetime(2026, 3, 2, 10, 15, 0)


@dataclass(frozen=True)
class SeriesFiles:
    """A written series: its phantom, UIDs and files."""

    phantom: Phantom
    series_uid: str
    description: str
    files: list[Path]


@dataclass(frozen=True)
class StudyFiles:
    """A written multi-series study."""

    study_uid: str
    series: list[SeriesFiles]

    def by_phase(self, phase: Phase) -> SeriesFiles:
        return next(s for s in self.series if s.phantom.phase is phase)


def write_study(
    seed: int,
    folder: Path,
    phases: tuple[Phase, ...] = (Phase.NONCONTRAST, Phase.ARTERIAL, Phase.NEPHROGRAPHIC),
    grid: Grid | None = None,
    ckd_stage: int | None = None,
    patient_id: str = "PHANTOM",
) -> StudyFiles:
    """Render one anatomy in several phases and write each as a series under ``folder/<n>/``."""
    anatomy = draw_anatomy(seed, ckd_stage)
    grid = grid or Grid.centred(128, 2.8, 36, 5.0)
    study_uid = generate_uid(entropy_srcs=["study", str(seed), patient_id])
    frame_uid = generate_uid(entropy_srcs=["frame", str(seed), patient_id])
    written = []
    for number, phase in enumerate(phases, start=1):
        phantom = render(anatomy, phase, grid)
        description = PHASE_TAGS[phase][0]
        series_uid = generate_uid(entropy_srcs=["series", str(seed), patient_id, phase.value, str(grid)])
        files = write_series(phantom, folder / f"{number:02d}_{phase.value}", study_uid, series_uid, frame_uid, number, patient_id)
        written.append(SeriesFiles(phantom, series_uid, description, files))
    return StudyFiles(study_uid, written)


def write_series(
    phantom: Phantom,
    folder: Path,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    series_number: int,
    patient_id: str = "PHANTOM",
) -> list[Path]:
    """Write one axial CT series, one file per slice, in Explicit VR Little Endian."""
    folder.mkdir(parents=True, exist_ok=True)
    description, protocol, delay = PHASE_TAGS[phantom.phase]
    acquired = _BOLUS_START + dt.timedelta(seconds=delay if delay is not None else -120.0)
    grid = phantom.grid
    paths = []
    for k in range(grid.shape[0]):
        ds = _ct_slice(phantom, k, study_uid, series_uid, frame_uid, series_number, patient_id)
        ds.SeriesDescription = description
        ds.ProtocolName = protocol
        ds.AcquisitionTime = ds.SeriesTime = ds.ContentTime = acquired.strftime("%H%M%S")
        if delay is not None:
            ds.ContrastBolusAgent = "Iohexol 350"
            ds.ContrastBolusStartTime = _BOLUS_START.strftime("%H%M%S")
        path = folder / f"{series_number:02d}_{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def ct_dataset(sop_uid: str, study_uid: str, series_uid: str, frame_uid: str) -> pydicom.Dataset:
    """An empty CT Image Storage instance with its file meta (Explicit VR Little Endian) and identifying UIDs."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
    return ds


def _ct_slice(phantom: Phantom, k: int, study_uid: str, series_uid: str, frame_uid: str, series_number: int, patient_id: str) -> pydicom.Dataset:
    grid = phantom.grid
    ds = ct_dataset(generate_uid(entropy_srcs=[series_uid, str(k)]), study_uid, series_uid, frame_uid)
    ds.PatientName, ds.PatientID = f"Phantom^{phantom.anatomy.seed}", patient_id
    ds.PatientBirthDate, ds.PatientSex = "19600101", "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = _BOLUS_START.strftime("%Y%m%d")
    ds.StudyTime = "101000"
    ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = f"ACC{phantom.anatomy.seed}", "1", ""
    ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = "CT", "dicomnode phantom", "phantom"
    ds.BodyPartExamined = "ABDOMEN"
    ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = series_number, k + 1, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    position = [grid.origin[0], grid.origin[1], grid.origin[2] + k * grid.spacing[2]]
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = f"{position[2]:.4f}"
    ds.PositionReferenceIndicator = ""
    ds.PixelSpacing = [f"{grid.spacing[1]:.4f}", f"{grid.spacing[0]:.4f}"]
    ds.SliceThickness = f"{grid.spacing[2]:.4f}"
    ds.KVP = "120"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = grid.shape[1], grid.shape[2]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.PixelData = np.ascontiguousarray(phantom.image[k]).astype("<i2").tobytes()
    return ds


def to_sitk(array: np.ndarray, grid: Grid) -> sitk.Image:
    """A ``[z, y, x]`` array as a SimpleITK image on ``grid`` (LPS, identity direction)."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    return image


def write_nifti(phantom: Phantom, image_path: Path, label_path: Path) -> None:
    """Write the HU image and the full label map as NIfTI."""
    sitk.WriteImage(to_sitk(phantom.image, phantom.grid), str(image_path))
    sitk.WriteImage(to_sitk(phantom.labels, phantom.grid), str(label_path))
