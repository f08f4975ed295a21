"""Loading a series into patient space, and refusing broken geometry with a reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicomnode.imaging.load import GeometryError, PixelDataError, load_series
from training.phantom_dicom import SeriesFiles, write_study
from training.phantoms import Grid, Phase


@pytest.fixture()
def arterial(tmp_path: Path) -> SeriesFiles:
    return write_study(11, tmp_path, phases=(Phase.ARTERIAL,), grid=Grid.centred(48, 7.0, 12, 5.0)).series[0]


def _edit(path: Path, **values) -> None:
    ds = pydicom.dcmread(path)
    for key, value in values.items():
        setattr(ds, key, value)
    ds.save_as(path)


def test_loads_hu_in_patient_space(arterial: SeriesFiles) -> None:
    files = list(reversed(arterial.files))  # order on disk must not matter
    series = load_series(files)
    assert np.array_equal(series.hu, arterial.phantom.image.astype(np.float32))
    assert np.allclose(series.spacing, arterial.phantom.grid.spacing)
    assert np.allclose(series.origin, arterial.phantom.grid.origin, atol=1e-3)
    assert np.allclose(series.direction, np.eye(3))


def test_missing_slice(arterial: SeriesFiles) -> None:
    with pytest.raises(GeometryError, match="missing slices"):
        load_series(arterial.files[:5] + arterial.files[6:])


def test_uneven_spacing(arterial: SeriesFiles) -> None:
    ds = pydicom.dcmread(arterial.files[4])
    position = [float(v) for v in ds.ImagePositionPatient]
    _edit(arterial.files[4], ImagePositionPatient=[position[0], position[1], position[2] + 1.0])
    with pytest.raises(GeometryError, match="uneven slice spacing"):
        load_series(arterial.files)


def test_gantry_tilt(arterial: SeriesFiles) -> None:
    for k, path in enumerate(arterial.files):
        position = [float(v) for v in pydicom.dcmread(path).ImagePositionPatient]
        _edit(path, ImagePositionPatient=[position[0], position[1] + 1.5 * k, position[2]])
    with pytest.raises(GeometryError, match="gantry tilt"):
        load_series(arterial.files)


def test_mixed_orientations(arterial: SeriesFiles) -> None:
    _edit(arterial.files[3], ImageOrientationPatient=[1, 0, 0, 0, 0, -1])
    with pytest.raises(GeometryError, match="orientations"):
        load_series(arterial.files)


def test_duplicate_positions(arterial: SeriesFiles) -> None:
    with pytest.raises(GeometryError, match="share one position"):
        load_series(arterial.files + [arterial.files[2]])


@pytest.mark.parametrize("encoder", ["dcmcjpeg +e1", "dcmcjpls", "dcmcrle", "j2k"])
def test_compressed_transfer_syntaxes_decode_losslessly(arterial: SeriesFiles, tmp_path: Path, encoder: str) -> None:
    import subprocess

    from pydicom.uid import JPEG2000Lossless

    compressed = []
    for path in arterial.files:
        target = tmp_path / path.name
        if encoder == "j2k":
            ds = pydicom.dcmread(path)
            ds.compress(JPEG2000Lossless)
            ds.save_as(target)
        else:
            subprocess.run([*encoder.split(), str(path), str(target)], check=True)
        compressed.append(target)
    assert pydicom.dcmread(compressed[0]).file_meta.TransferSyntaxUID.is_compressed
    series = load_series(compressed)
    assert np.array_equal(series.hu, arterial.phantom.image.astype(np.float32))


def test_truncated_pixel_data_is_refused_with_a_reason(arterial: SeriesFiles) -> None:
    from dicomnode.imaging.load import PixelDataError

    data = arterial.files[3].read_bytes()
    arterial.files[3].write_bytes(data[: len(data) - 2000])
    with pytest.raises(PixelDataError, match="instance 4"):
        load_series(arterial.files)


def test_bits_allocated_that_contradicts_the_pixel_data_is_refused(arterial: SeriesFiles) -> None:
    for path in arterial.files:
        _edit(path, BitsAllocated=8, BitsStored=8, HighBit=7)  # 16-bit pixel data declared 8-bit
    with pytest.raises(PixelDataError, match="BitsAllocated"):
        load_series(arterial.files)


def test_signed_pixels_declared_unsigned_are_refused(arterial: SeriesFiles) -> None:
    for path in arterial.files:
        _edit(path, PixelRepresentation=0)  # air at -1000 now reads as 64536
    with pytest.raises(PixelDataError, match="PixelRepresentation"):
        load_series(arterial.files)


def test_rescale_that_makes_no_ct_numbers_is_refused(arterial: SeriesFiles) -> None:
    for path in arterial.files:
        _edit(path, RescaleSlope="10")
    with pytest.raises(PixelDataError, match="RescaleSlope"):
        load_series(arterial.files)


def test_padding_outside_the_reconstruction_circle_is_accepted(arterial: SeriesFiles) -> None:
    for path in arterial.files:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array.copy()
        pixels[:6, :] = -3024  # a scanner's padding value outside the field of view
        ds.PixelData = pixels.astype("<i2").tobytes()
        ds.save_as(path)
    assert load_series(arterial.files).hu.min() == -3024


@pytest.mark.parametrize(("signed", "bits"), [(0, 12), (1, 12), (1, 16), (0, 16)])
def test_native_pixels_are_read_as_pydicom_decodes_them(arterial: SeriesFiles, signed: int, bits: int) -> None:
    """Pixel data read straight from its bytes equals pydicom's decoding and the phantom's HU, with the bits above
    BitsStored set on purpose (a decoder must ignore them)."""
    rng = np.random.default_rng(bits + signed)
    intercept = 0 if signed else -1024
    for path in arterial.files:
        ds = pydicom.dcmread(path)
        stored = (ds.pixel_array.astype(np.int32) - intercept).astype(np.uint16)
        if bits < 16:
            garbage = rng.integers(0, 2 ** (16 - bits), stored.shape, dtype=np.uint16) << bits
            stored = (stored & np.uint16(2**bits - 1)) | garbage
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.RescaleIntercept = bits, bits - 1, signed, intercept
        ds.PixelData = stored.tobytes()
        ds.save_as(path)
        assert np.array_equal(ds.pixel_array.astype(np.int32) + intercept, pydicom.dcmread(path).pixel_array.astype(np.int32) + intercept)
    series = load_series(list(arterial.files))
    assert series.hu.dtype == (np.float32 if (signed, bits) == (0, 16) else np.int16)  # 65535 - 1024 does not fit int16
    assert np.array_equal(series.hu, arterial.phantom.image)
    decoded = [pydicom.dcmread(path).pixel_array.astype(np.float32) + intercept for path in arterial.files]
    assert np.array_equal(series.hu, np.stack(decoded))


def test_a_fractional_rescale_gives_float_hu(arterial: SeriesFiles) -> None:
    for path in arterial.files:
        _edit(path, RescaleSlope=0.5, RescaleIntercept=0.25)
    series = load_series(list(arterial.files))
    assert series.hu.dtype == np.float32
    assert np.array_equal(series.hu, arterial.phantom.image.astype(np.float32) * np.float32(0.5) + np.float32(0.25))
