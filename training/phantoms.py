"""Synthetic abdominal CT phantoms with ground-truth labels, deterministic from a seed.

Anatomy is drawn once per seed (:func:`draw_anatomy`) and rendered per contrast phase
(:func:`render`), so one patient can yield a multi-phase study. Coordinates are DICOM
patient coordinates (LPS, mm): +x is the patient's left, +y posterior, +z superior.
Arrays are indexed ``[z, y, x]``; voxel ``(k, j, i)`` sits at ``origin + (i*sx, j*sy, k*sz)``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage


class Phase(str, enum.Enum):
    """Contrast phase of a rendered series."""

    NONCONTRAST = "noncontrast"
    ARTERIAL = "arterial"  # corticomedullary
    NEPHROGRAPHIC = "nephrographic"  # portal-venous / nephrographic
    DELAYED = "delayed"  # excretory


class Label(enum.IntEnum):
    """Full ground-truth label map of a phantom."""

    BACKGROUND = 0
    BODY = 1
    SPINE = 2
    AORTA = 3
    IVC = 4
    LIVER = 5
    SPLEEN = 6
    CORTEX = 7
    MEDULLA = 8
    SINUS_FAT = 9
    PELVIS = 10
    CYST = 11
    STONE = 12
    CALCIFICATION = 13
    RENAL_VESSEL = 14


#: The column of each phase in the per-phase HU tables: here and in :mod:`training.synth.hu` (whose rendered values
#: are ranges drawn from per case, not these fixed means).
PHASE_COLUMN = {Phase.NONCONTRAST: 0, Phase.ARTERIAL: 1, Phase.NEPHROGRAPHIC: 2, Phase.DELAYED: 3}
# Mean HU per label and phase: (noncontrast, arterial, nephrographic, delayed), by PHASE_COLUMN.
_HU: dict[Label, tuple[float, float, float, float]] = {
    Label.BODY: (-90.0, -90.0, -90.0, -90.0),
    Label.SPINE: (350.0, 350.0, 350.0, 350.0),
    Label.AORTA: (40.0, 280.0, 160.0, 110.0),
    Label.IVC: (38.0, 90.0, 150.0, 110.0),
    Label.LIVER: (55.0, 75.0, 115.0, 90.0),
    Label.SPLEEN: (45.0, 125.0, 120.0, 100.0),
    Label.CORTEX: (35.0, 190.0, 165.0, 125.0),
    Label.MEDULLA: (30.0, 100.0, 175.0, 135.0),
    Label.SINUS_FAT: (-80.0, -80.0, -80.0, -80.0),
    Label.PELVIS: (8.0, 8.0, 10.0, 650.0),
    Label.STONE: (700.0, 700.0, 700.0, 700.0),
    Label.CALCIFICATION: (800.0, 800.0, 800.0, 800.0),
    Label.RENAL_VESSEL: (40.0, 260.0, 160.0, 110.0),
}
_SOFT_TISSUE_HU = 45.0  # muscle ring and psoas
_AIR_HU = -1000.0


@dataclass(frozen=True)
class Grid:
    """Image grid: matrix size, spacing (mm) and origin of voxel (0, 0, 0)."""

    shape: tuple[int, int, int]  # (nz, ny, nx)
    spacing: tuple[float, float, float]  # (sx, sy, sz) in mm
    origin: tuple[float, float, float]  # (x, y, z) in mm

    @property
    def voxel_ml(self) -> float:
        return self.spacing[0] * self.spacing[1] * self.spacing[2] / 1000.0

    @classmethod
    def centred(cls, matrix: int, pixel_mm: float, slices: int, slice_mm: float, z_centre: float = 0.0) -> Grid:
        """A square axial grid centred on the patient axis, ``slices`` slices around ``z_centre``."""
        half = (matrix - 1) * pixel_mm / 2.0
        z0 = z_centre - (slices - 1) * slice_mm / 2.0
        return cls((slices, matrix, matrix), (pixel_mm, pixel_mm, slice_mm), (-half, -half, z0))


@dataclass(frozen=True)
class Kidney:
    """One kidney: centre, semi-axes (long, wide, deep) in mm, rotation and cortex thickness."""

    side: str  # "left" or "right"
    centre: tuple[float, float, float]
    axes: tuple[float, float, float]
    tilt_deg: float  # long axis tilt from z towards x (lower pole lateral)
    hilum_deg: float  # rotation about the long axis: hilum faces antero-medially
    cortex_mm: float
    pyramids: int


@dataclass(frozen=True)
class Lesion:
    """A sphere of one label and HU placed at ``centre`` (mm)."""

    label: Label
    centre: tuple[float, float, float]
    radius: float
    hu: float


@dataclass(frozen=True)
class Anatomy:
    """Everything drawn from the seed that does not depend on the phase."""

    seed: int
    body_axes: tuple[float, float]
    kidneys: tuple[Kidney, Kidney]
    ckd_stage: int  # 0 = control, 1 mild, 2 moderate, 3 severe
    lesions: tuple[Lesion, ...]
    enhancement: float  # scales contrast enhancement of this patient
    noise_sd: float


@dataclass
class Phantom:
    """A rendered phantom: HU image, full label map and the grid they share."""

    anatomy: Anatomy
    phase: Phase
    grid: Grid
    image: np.ndarray  # int16 HU, [z, y, x]
    labels: np.ndarray  # uint8 Label, [z, y, x]
    volumes_ml: dict[str, float] = field(default_factory=dict)

    def kidney_mask(self, side: str, structure: str) -> np.ndarray:
        """Boolean mask of ``structure`` ('cortex', 'medulla', 'parenchyma') of one side."""
        x = self.grid.origin[0] + np.arange(self.grid.shape[2]) * self.grid.spacing[0]
        on_side = (x > 0) if side == "left" else (x <= 0)
        wanted = {"cortex": (Label.CORTEX,), "medulla": (Label.MEDULLA,), "parenchyma": (Label.CORTEX, Label.MEDULLA)}
        return np.isin(self.labels, wanted[structure]) & on_side[None, None, :]


def draw_anatomy(seed: int, ckd_stage: int | None = None, hard_cases: bool = True) -> Anatomy:
    """Draw a patient's anatomy. CKD stage 0-3 shrinks kidneys and thins the cortex."""
    rng = np.random.default_rng(seed)
    stage = int(rng.integers(0, 4)) if ckd_stage is None else ckd_stage
    shrink = (1.0, 0.93, 0.85, 0.76)[stage] * rng.uniform(0.92, 1.08)
    cortex = (8.5, 7.0, 5.8, 4.8)[stage] * rng.uniform(0.9, 1.1)
    kidneys = []
    for side, sign in (("left", 1.0), ("right", -1.0)):
        centre = (
            sign * rng.uniform(68, 82),
            rng.uniform(45, 60),
            rng.uniform(-5, 10) - (12.0 if side == "right" else 0.0),
        )
        axes = (rng.uniform(52, 60) * shrink, rng.uniform(28, 33) * shrink, rng.uniform(22, 26) * shrink)
        kidneys.append(Kidney(side, centre, axes, sign * rng.uniform(8, 20), sign * rng.uniform(25, 45), cortex, int(rng.integers(6, 10))))
    lesions: list[Lesion] = []
    if hard_cases:
        for kidney in kidneys:
            if rng.random() < 0.35:  # simple or hyperdense cyst at the cortex
                hu = rng.uniform(0, 15) if rng.random() < 0.7 else rng.uniform(60, 85)
                radius = rng.uniform(5, 12)
                offset = np.array([rng.uniform(-0.6, 0.6) * kidney.axes[0], 0, 0])
                lateral = np.array([np.sign(kidney.centre[0]) * kidney.axes[1] * 0.85, 0, 0])
                lesions.append(Lesion(Label.CYST, tuple(np.array(kidney.centre) + offset + lateral), radius, hu))
            if rng.random() < 0.3:  # stone in the collecting system
                medial = np.array([-np.sign(kidney.centre[0]) * kidney.axes[1] * 0.35, 0, rng.uniform(-10, 10)])
                lesions.append(Lesion(Label.STONE, tuple(np.array(kidney.centre) + medial), rng.uniform(1.5, 4), rng.uniform(400, 1000)))
        if rng.random() < 0.5:  # calcified plaques in the aortic wall
            for _ in range(int(rng.integers(1, 4))):
                angle = rng.uniform(0, 2 * np.pi)
                centre = (15 + 10 * np.cos(angle), 30 + 10 * np.sin(angle), rng.uniform(-60, 60))
                lesions.append(Lesion(Label.CALCIFICATION, centre, rng.uniform(1.5, 3), rng.uniform(600, 1000)))
    return Anatomy(
        seed=seed,
        body_axes=(rng.uniform(140, 170), rng.uniform(105, 125)),
        kidneys=(kidneys[0], kidneys[1]),
        ckd_stage=stage,
        lesions=tuple(lesions),
        enhancement=rng.uniform(0.85, 1.15),
        noise_sd=rng.uniform(8, 18),
    )


def render(anatomy: Anatomy, phase: Phase, grid: Grid) -> Phantom:
    """Render the anatomy on ``grid`` in ``phase``: labels from voxel centres, HU with blur and noise."""
    nz, ny, nx = grid.shape
    z = grid.origin[2] + np.arange(nz) * grid.spacing[2]
    y = grid.origin[1] + np.arange(ny) * grid.spacing[1]
    x = grid.origin[0] + np.arange(nx) * grid.spacing[0]
    Z, Y, X = np.meshgrid(z, y, x, indexing="ij", sparse=True)
    labels = np.zeros(grid.shape, np.uint8)

    a, b = anatomy.body_axes
    body = (X / a) ** 2 + (Y / b) ** 2 <= 1.0
    labels[np.broadcast_to(body, grid.shape)] = Label.BODY
    muscle = body & ((X / (a - 12)) ** 2 + (Y / (b - 12)) ** 2 > 1.0)
    psoas = (((np.abs(X) - 38) / 16) ** 2 + ((Y - 55) / 20) ** 2) <= 1.0
    _paint(labels, _ellipsoid(X, Y, Z, (-70, -5, 55), (85, 80, 75)), Label.LIVER)
    _paint(labels, _ellipsoid(X, Y, Z, (95, 45, 45), (30, 45, 55)), Label.SPLEEN)
    _paint(labels, np.broadcast_to(_disc(X, Y, 0, 65, 20), grid.shape), Label.SPINE)
    _paint(labels, np.broadcast_to(_disc(X, Y, 15, 30, 11), grid.shape), Label.AORTA)
    _paint(labels, np.broadcast_to(_disc(X, Y, -22, 25, 12), grid.shape), Label.IVC)
    for kidney in anatomy.kidneys:
        _paint_kidney(labels, kidney, X, Y, Z, grid)
    for lesion in anatomy.lesions:
        sphere = (X - lesion.centre[0]) ** 2 + (Y - lesion.centre[1]) ** 2 + (Z - lesion.centre[2]) ** 2 <= lesion.radius**2
        _paint(labels, sphere & body, lesion.label)

    hu = _hu_image(anatomy, phase, labels, np.broadcast_to(muscle | psoas, grid.shape), grid)
    phantom = Phantom(anatomy, phase, grid, hu, labels)
    phantom.volumes_ml = {
        f"{structure}_{side}": float(phantom.kidney_mask(side, structure).sum() * grid.voxel_ml)
        for side in ("left", "right")
        for structure in ("parenchyma", "cortex", "medulla")
    }
    return phantom


def make_phantom(seed: int, phase: Phase = Phase.ARTERIAL, grid: Grid | None = None, ckd_stage: int | None = None) -> Phantom:
    """One phantom from a seed, on a small default grid (128 x 128 at 2.8 mm, 5 mm slices)."""
    return render(draw_anatomy(seed, ckd_stage), phase, grid or Grid.centred(128, 2.8, 36, 5.0))


def _ellipsoid(X, Y, Z, centre, axes) -> np.ndarray:
    return ((X - centre[0]) / axes[0]) ** 2 + ((Y - centre[1]) / axes[1]) ** 2 + ((Z - centre[2]) / axes[2]) ** 2 <= 1.0


def _disc(X, Y, cx: float, cy: float, r: float) -> np.ndarray:
    return (X - cx) ** 2 + (Y - cy) ** 2 <= r**2


def _paint(labels: np.ndarray, mask: np.ndarray, label: Label) -> None:
    labels[np.broadcast_to(mask, labels.shape)] = label


def _kidney_frame(kidney: Kidney) -> np.ndarray:
    """Rows are the kidney's unit axes (long, wide, deep) in patient coordinates."""
    t, h = np.radians(kidney.tilt_deg), np.radians(kidney.hilum_deg)
    tilt = np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])  # about y
    spin = np.array([[np.cos(h), -np.sin(h), 0], [np.sin(h), np.cos(h), 0], [0, 0, 1]])  # about z
    long_axis, wide_axis, deep_axis = np.array([0, 0, 1.0]), np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    rot = spin @ tilt
    return np.stack([rot @ long_axis, rot @ wide_axis, rot @ deep_axis])


def _paint_kidney(labels: np.ndarray, kidney: Kidney, X, Y, Z, grid: Grid) -> None:
    """Cortex shell with columns, medullary pyramids, sinus fat and pelvis opening medially."""
    reach = max(kidney.axes) + 4.0
    box = _box(grid, kidney.centre, reach)
    if box is None:
        return
    sub = tuple(slice(lo, hi) for lo, hi in box)
    frame = _kidney_frame(kidney)
    dx, dy, dz = (np.asarray(X)[..., sub[2]] - kidney.centre[0]), (np.asarray(Y)[:, sub[1], :] - kidney.centre[1]), (np.asarray(Z)[sub[0]] - kidney.centre[2])
    u = frame[0, 0] * dx + frame[0, 1] * dy + frame[0, 2] * dz
    v = frame[1, 0] * dx + frame[1, 1] * dy + frame[1, 2] * dz
    w = frame[2, 0] * dx + frame[2, 1] * dy + frame[2, 2] * dz
    la, wa, da = kidney.axes
    kidney_mask = (u / la) ** 2 + (v / wa) ** 2 + (w / da) ** 2 <= 1.0
    medial = -np.sign(kidney.centre[0])  # the hilum faces the midline along the wide axis
    sinus = ((u / (0.55 * la)) ** 2 + ((v - medial * 0.55 * wa) / (0.62 * wa)) ** 2 + (w / (0.45 * da)) ** 2) <= 1.0
    pelvis = ((u / (0.3 * la)) ** 2 + ((v - medial * 0.7 * wa) / (0.35 * wa)) ** 2 + (w / (0.25 * da)) ** 2) <= 1.0
    depth = ndimage.distance_transform_edt(kidney_mask, sampling=(grid.spacing[2], grid.spacing[1], grid.spacing[0]))
    inner = kidney_mask & (depth > kidney.cortex_mm) & ~sinus
    angle = np.arctan2(w, medial * v)
    columns = np.cos(kidney.pyramids * angle / 2.0) ** 2 > 0.85
    bands = np.cos(np.pi * u / (0.45 * la)) ** 2 > 0.9
    medulla = inner & ~columns & ~bands
    region = labels[sub]
    region[kidney_mask & ~sinus] = Label.CORTEX
    region[medulla] = Label.MEDULLA
    region[sinus & kidney_mask] = Label.SINUS_FAT
    region[pelvis & (kidney_mask | (medial * v > 0))] = Label.PELVIS
    artery = (np.abs(u) < 4.0) & (np.abs(w) < 4.0) & (medial * v > 0.5 * wa) & (medial * v < 0.5 * wa + 45.0)
    region[artery & np.isin(region, (Label.BODY, Label.SINUS_FAT))] = Label.RENAL_VESSEL


def _box(grid: Grid, centre: tuple[float, float, float], reach: float) -> list[tuple[int, int]] | None:
    """Index ranges ``[(z0, z1), (y0, y1), (x0, x1)]`` covering ``centre`` +- ``reach`` mm, or None if outside."""
    out = []
    for axis_xyz, axis_zyx in ((2, 0), (1, 1), (0, 2)):
        lo = int(np.floor((centre[axis_xyz] - reach - grid.origin[axis_xyz]) / grid.spacing[axis_xyz]))
        hi = int(np.ceil((centre[axis_xyz] + reach - grid.origin[axis_xyz]) / grid.spacing[axis_xyz])) + 1
        lo, hi = max(lo, 0), min(hi, grid.shape[axis_zyx])
        if lo >= hi:
            return None
        out.append((lo, hi))
    return out


def _hu_image(anatomy: Anatomy, phase: Phase, labels: np.ndarray, muscle: np.ndarray, grid: Grid) -> np.ndarray:
    rng = np.random.default_rng([anatomy.seed, PHASE_COLUMN[phase]])
    column = PHASE_COLUMN[phase]
    hu = np.full(labels.shape, _AIR_HU, np.float32)
    base_nc = {label: values[0] for label, values in _HU.items()}
    for label, values in _HU.items():
        mean = values[column]
        if label not in (Label.BODY, Label.SINUS_FAT, Label.SPINE, Label.STONE, Label.CALCIFICATION):
            mean = base_nc[label] + (mean - base_nc[label]) * anatomy.enhancement
        hu[labels == label] = mean
    hu[muscle & (labels == Label.BODY)] = _SOFT_TISSUE_HU
    for lesion in anatomy.lesions:
        if lesion.label is not Label.CALCIFICATION:
            hu[labels == lesion.label] = lesion.hu
    sz = max(grid.spacing[2] / grid.spacing[0], 1.0)
    hu = ndimage.gaussian_filter(hu, sigma=(0.35 * sz, 0.6, 0.6))
    texture = ndimage.gaussian_filter(rng.normal(0, 1, labels.shape).astype(np.float32), 1.5) * 20.0
    hu += np.where(labels != Label.BACKGROUND, texture, 0.0)
    hu += rng.normal(0, anatomy.noise_sd, labels.shape).astype(np.float32)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
