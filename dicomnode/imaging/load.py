"""Load stage: a CT series -> HU volume in patient space, refused with a clear reason where geometry is broken."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomnode.imaging.axes import canonical_flips
from dicomnode.imaging.rescale import rescale


class SeriesError(ValueError):
    """The series cannot be used; the message says why."""


class GeometryError(SeriesError):
    """The series cannot be placed in patient space as one regular volume."""


class PixelDataError(SeriesError):
    """A slice's pixel data cannot be read or decoded."""


@dataclass
class LoadedSeries:
    """A series sorted along its slice normal, with its pixels in HU.

    ``hu`` is indexed ``[slice, row, column]`` in that order; ``direction`` holds the column (row-direction),
    row (column-direction) and slice-normal unit vectors as its columns, as in SimpleITK.
    """

    datasets: list[pydicom.Dataset]  # sorted along the normal; pixel data dropped after decoding
    hu: np.ndarray  # int16 where the CT numbers are whole (the usual CT), else float32
    origin: np.ndarray
    spacing: np.ndarray  # (column, row, slice) in mm
    direction: np.ndarray  # 3x3

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing (mm) along the array's slice, row and column axes, the order of ``hu``."""
        return (float(self.spacing[2]), float(self.spacing[1]), float(self.spacing[0]))

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing) / 1000.0)

    def to_sitk(self) -> sitk.Image:
        image = sitk.GetImageFromArray(self.hu)
        image.SetOrigin(tuple(float(v) for v in self.origin))
        image.SetSpacing(tuple(float(v) for v in self.spacing))
        image.SetDirection(tuple(float(v) for v in self.direction.flatten()))
        return image

    def to_patient(self, index_zyx: np.ndarray) -> np.ndarray:
        """Patient position (x, y, z mm, LPS) of an array index ``(slice, row, column)`` (fractional allowed)."""
        k, j, i = (float(v) for v in index_zyx)
        return self.origin + self.direction @ (np.array([i, j, k]) * self.spacing)

    def in_patient_axes(self, array: np.ndarray) -> np.ndarray:
        """An array on this series' grid (``hu``, a mask) flipped into patient axes (columns +x, rows +y, slices +z),
        as a view."""
        flips = canonical_flips(self.direction)
        return np.flip(array, flips) if flips else array

    def crop(self, box: tuple[slice, ...]) -> LoadedSeries:
        """The part of the series inside ``box`` (slice, row, column slices with starts and stops), same geometry."""
        start = np.array([s.start for s in box], float)
        return LoadedSeries(self.datasets[box[0]], np.ascontiguousarray(self.hu[box]), self.to_patient(start), self.spacing, self.direction)

    def canonical(self) -> tuple[np.ndarray, np.ndarray]:
        """``hu`` in patient axes (see :meth:`in_patient_axes`) and the patient position of its voxel [0, 0, 0]."""
        flips = canonical_flips(self.direction)
        corner = [self.hu.shape[axis] - 1 if axis in flips else 0 for axis in range(3)]
        return self.in_patient_axes(self.hu), self.to_patient(np.array(corner))


#: Elements longer than this (bytes) are read from the file only when used: each slice's pixel data is read as it
#: goes into the volume, so the series is never in memory twice.
DEFER_BYTES = 64 * 1024


def read_header(path: Path) -> pydicom.Dataset:
    """One instance with its large values (the pixel data) left unread until used (:data:`DEFER_BYTES`)."""
    return pydicom.dcmread(path, defer_size=DEFER_BYTES)


def load_series(files: list[Path], tolerance_mm: float = 0.05, headers: Sequence[pydicom.Dataset] = ()) -> LoadedSeries:
    """Read, check and stack one series; raise a :class:`SeriesError` with the reason where it fails. ``headers``,
    where given, are the files' already read by :func:`read_header` (the select stage's), so that only their pixel
    data is read here."""
    datasets: list[pydicom.Dataset] = list(headers)
    for path in files if not headers else ():
        try:
            datasets.append(read_header(path))
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            raise PixelDataError(f"{path.name} cannot be read: {exc}") from exc
    if len(datasets) < 2:
        raise GeometryError("fewer than two slices")
    orientations = {tuple(round(v, 4) for v in _numbers(ds, "ImageOrientationPatient", 6)) for ds in datasets}
    if len(orientations) != 1:
        raise GeometryError(f"{len(orientations)} different image orientations in one series")
    row_dir, col_dir = np.array(next(iter(orientations))[:3]), np.array(next(iter(orientations))[3:])
    if abs(np.linalg.norm(row_dir) - 1) > 0.01 or abs(np.linalg.norm(col_dir) - 1) > 0.01 or abs(float(row_dir @ col_dir)) > 0.01:
        raise GeometryError(f"ImageOrientationPatient {list(next(iter(orientations)))} is not two orthogonal unit vectors")
    normal = np.cross(row_dir, col_dir)
    shapes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    shape = next(iter(shapes))
    pixel_spacings = {tuple(round(v, 4) for v in _numbers(ds, "PixelSpacing", 2)) for ds in datasets}
    if len(shapes) != 1 or len(pixel_spacings) != 1:
        raise GeometryError("slices differ in matrix size or pixel spacing")
    if min(next(iter(pixel_spacings))) <= 0:
        raise GeometryError(f"PixelSpacing {list(next(iter(pixel_spacings)))}: a pixel's size must be above 0 mm")
    positions = np.array([_numbers(ds, "ImagePositionPatient", 3) for ds in datasets])
    order = np.argsort(positions @ normal)
    datasets = [datasets[i] for i in order]
    positions = positions[order]
    distances = positions @ normal
    steps = np.diff(distances)
    if np.any(steps < tolerance_mm):
        raise GeometryError("two slices share one position (duplicates or a mixed series)")
    step = float(np.median(steps))
    if np.any(steps > 1.5 * step):
        gaps = int(np.sum(np.round(steps / step) - 1))
        raise GeometryError(f"missing slices: about {gaps} gaps in a {step:.2f} mm series")
    if np.max(np.abs(steps - step)) > max(tolerance_mm, 0.01 * step):
        raise GeometryError(f"uneven slice spacing ({steps.min():.2f}-{steps.max():.2f} mm)")
    drift = positions[-1] - positions[0]
    cosine = abs(float(drift @ normal)) / float(np.linalg.norm(drift))
    if cosine < 0.9999:
        raise GeometryError(f"gantry tilt or sheared stack: slices advance {np.degrees(np.arccos(cosine)):.1f} deg off the normal")
    for ds in datasets:
        check_pixel_header(ds)
    rescales = [_rescale(ds) for ds in datasets]
    hu = np.empty((len(datasets), *shape), _volume_dtype(datasets, rescales))
    for k, (ds, (slope, intercept)) in enumerate(zip(datasets, rescales)):
        _read_hu(ds, shape, slope, intercept, hu[k])
        del ds.PixelData
    check_hu(hu)
    row_spacing, col_spacing = (float(v) for v in next(iter(pixel_spacings)))
    return LoadedSeries(
        datasets=datasets,
        hu=hu,
        origin=positions[0],
        spacing=np.array([col_spacing, row_spacing, step]),
        direction=np.stack([row_dir, col_dir, normal], axis=1),
    )


def _numbers(ds: pydicom.Dataset, keyword: str, count: int) -> list[float]:
    """``count`` finite numbers of a geometry attribute, or a GeometryError naming it and the slice."""
    where = f"instance {ds.get('InstanceNumber', '?')}"
    try:
        values = [float(v) for v in ds[keyword].value]
    except (KeyError, TypeError, ValueError):
        raise GeometryError(f"{where}: {keyword} is missing or not numbers") from None
    if len(values) != count or not all(np.isfinite(values)):
        raise GeometryError(f"{where}: {keyword} {values} is not {count} finite numbers")
    return values


#: Above this HU only metal lies (even on extended CT scales, a small share of voxels); below -1100 HU lies padding
#: outside the reconstruction circle (often -2000 or -3024), which is not checked.
DENSE_HU, MAX_DENSE_SHARE = 3500.0, 0.005
#: Share of voxels that must be fat or soft tissue (-150 to 150 HU) in any abdominal CT.
MIN_SOFT_TISSUE_SHARE = 0.05
#: check_hu counts this many voxels at a time.
CHECK_VOXELS = 8 * 2**20


def check_pixel_header(ds: pydicom.Dataset) -> None:
    """Refuse an instance whose pixel description contradicts itself or the pixel data's length, naming the attribute."""
    where = f"instance {ds.get('InstanceNumber', '?')}"
    samples, bits, stored, high = (ds.get(k) for k in ("SamplesPerPixel", "BitsAllocated", "BitsStored", "HighBit"))
    if samples not in (None, 1):
        raise PixelDataError(f"{where}: SamplesPerPixel {samples}, a CT slice has 1")
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")) not in ("MONOCHROME1", "MONOCHROME2"):
        raise PixelDataError(f"{where}: PhotometricInterpretation {ds.PhotometricInterpretation} is not monochrome")
    if bits not in (8, 16, 32):
        raise PixelDataError(f"{where}: BitsAllocated {bits} is not 8, 16 or 32")
    if stored is None or not 1 <= int(stored) <= int(bits):
        raise PixelDataError(f"{where}: BitsStored {stored} does not fit BitsAllocated {bits}")
    if high is not None and int(high) != int(stored) - 1:
        raise PixelDataError(f"{where}: HighBit {high} is not BitsStored - 1 ({int(stored) - 1})")
    if ds.get("PixelRepresentation") not in (0, 1):
        raise PixelDataError(f"{where}: PixelRepresentation {ds.get('PixelRepresentation')} is not 0 or 1")
    if "PixelData" in ds:
        _check_pixel_length(ds, _declared_length(ds))


def _declared_length(ds: pydicom.Dataset) -> int:
    """The pixel data's length as its header gives it, without reading a value :data:`DEFER_BYTES` left unread."""
    element = ds.get_item("PixelData", keep_deferred=True)
    if isinstance(element, RawDataElement) and element.value is None:
        return int(element.length)
    return len(element.value or b"")


def _check_pixel_length(ds: pydicom.Dataset, length: int) -> None:
    """Refuse native pixel data whose length is not Rows x Columns x BitsAllocated / 8 (encapsulated data: its
    decoder judges it)."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or syntax.is_compressed:
        return
    expected = int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8
    if length not in (expected, expected + 1):  # one byte of padding to an even length
        raise PixelDataError(
            f"instance {ds.get('InstanceNumber', '?')}: pixel data holds {length} bytes, Rows x Columns x BitsAllocated/8 = {expected}: "
            "BitsAllocated, Rows or Columns is wrong"
        )


def check_hu(hu: np.ndarray) -> None:
    """Refuse a volume whose values are not CT numbers (e.g. signed data declared unsigned: PixelRepresentation 0).
    Counted a few slices at a time, so that no mask of the whole volume is made."""
    dense = soft = 0
    step = max(1, CHECK_VOXELS // max(1, hu[0].size))
    for first in range(0, hu.shape[0], step):
        part = hu[first : first + step]
        dense += int(np.count_nonzero(part > DENSE_HU))
        soft += int(np.count_nonzero((part >= -150) & (part <= 150)))
    if dense / hu.size > MAX_DENSE_SHARE:
        raise PixelDataError(
            f"{100 * dense / hu.size:.1f} % of voxels lie above {DENSE_HU:.0f} HU, where only metal lies: check PixelRepresentation "
            "(signed data declared unsigned), RescaleSlope and RescaleIntercept"
        )
    if soft / hu.size < MIN_SOFT_TISSUE_SHARE:
        raise PixelDataError(
            f"only {100 * soft / hu.size:.1f} % of voxels are fat or soft tissue (-150 to 150 HU): check RescaleSlope, RescaleIntercept and PixelRepresentation"
        )


def _volume_dtype(datasets: list[pydicom.Dataset], rescales: list[tuple[float, float]]) -> np.dtype:
    """int16 where every slice's CT numbers (``rescales``: slope and intercept per slice) are whole numbers within
    int16 for any stored value its header allows (the usual CT: slope 1, a whole intercept, 12-16 stored bits), else
    float32."""
    for ds, (slope, intercept) in zip(datasets, rescales):
        bits, signed = int(ds.BitsStored), ds.PixelRepresentation == 1
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        ends = sorted((low * slope + intercept, high * slope + intercept))
        if not (slope.is_integer() and intercept.is_integer() and ends[0] >= -32768 and ends[1] <= 32767):
            return np.dtype(np.float32)
    return np.dtype(np.int16)


def _rescale(ds: pydicom.Dataset) -> tuple[float, float]:
    try:
        return rescale(ds)
    except ValueError as exc:
        raise PixelDataError(f"instance {ds.get('InstanceNumber', '?')}: {exc}") from exc


def _read_hu(ds: pydicom.Dataset, shape: tuple[int, int], slope: float, intercept: float, out: np.ndarray) -> None:
    """One slice's HU into ``out`` (a slice of the volume): native 16-bit little-endian pixel data straight from its
    bytes, any other syntax through pydicom's decoders."""
    where = f"instance {ds.get('InstanceNumber', '?')}"
    try:
        data = ds.get("PixelData")  # read here from the file where it was left unread (DEFER_BYTES)
    except Exception as exc:  # the file changed or is cut short since its header was read
        raise PixelDataError(f"{where}: pixel data cannot be read: {exc}") from exc
    if data is not None:
        _check_pixel_length(ds, len(data))
    raw = _native_raw(ds, shape)
    bits = int(ds.BitsStored)
    if raw is not None and out.dtype == np.int16 and slope == 1 and (raw.dtype.kind == "i" or bits <= 15):
        # the stored values fit int16, and so does each plus the intercept (_volume_dtype): made in place, exactly
        _stored_values(raw, bits, out)
        out += np.int16(intercept)
        return
    if raw is not None:
        pixels = _stored_values(raw, bits)
    else:
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # decoders raise many types for truncated or unsupported data
            raise PixelDataError(f"{where}: pixel data cannot be decoded: {exc}") from exc
    if pixels.shape != shape:
        raise PixelDataError(f"{where}: pixel data is {pixels.shape}, expected {shape}")
    if out.dtype == np.int16:  # whole numbers that fit (_volume_dtype): exact in int32
        stored = pixels if slope == 1 else pixels.astype(np.int32) * np.int32(slope)
        np.add(stored, np.int32(intercept), out=out, casting="unsafe")
    else:  # as rescale.to_hu: float32 throughout
        np.multiply(pixels, np.float32(slope), out=out, casting="unsafe")
        out += np.float32(intercept)


#: Syntaxes whose pixel data is the pixels' bytes, little endian.
_NATIVE_LITTLE_ENDIAN = (ImplicitVRLittleEndian, ExplicitVRLittleEndian)


def _native_raw(ds: pydicom.Dataset, shape: tuple[int, int]) -> np.ndarray | None:
    """16-bit native pixel data as its bytes hold it (a view; signed or unsigned as PixelRepresentation says, bits
    above BitsStored as stored); None for any other encoding."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax not in _NATIVE_LITTLE_ENDIAN or int(ds.BitsAllocated) != 16 or "PixelData" not in ds:
        return None
    count = shape[0] * shape[1]
    if len(ds.PixelData) < 2 * count:
        return None  # pydicom's decoder names what is wrong
    return np.frombuffer(ds.PixelData, "<i2" if ds.PixelRepresentation == 1 else "<u2", count).reshape(shape)


def _stored_values(raw: np.ndarray, bits_stored: int, out: np.ndarray | None = None) -> np.ndarray:
    """The stored values of :func:`_native_raw`'s pixels as pydicom decodes them: bits above ``bits_stored`` cleared,
    or the sign extended from the highest stored bit; written into ``out`` where given."""
    unused = 16 - bits_stored
    if unused and raw.dtype.kind == "i":
        shifted = np.left_shift(raw, unused, out=out)
        return np.right_shift(shifted, unused, out=shifted)
    if unused:
        return np.bitwise_and(raw, np.uint16((1 << bits_stored) - 1), out=out, casting="unsafe")
    if out is None:
        return raw
    np.copyto(out, raw, casting="unsafe")
    return out
