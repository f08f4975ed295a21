"""One synthetic case from its seed (:func:`make_synth_case`), and cases written as NIfTI with a manifest."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from training.anatomies import ANATOMY_CREDITS
from training.cases import Case, write_manifest
from training.phantom_dicom import to_sitk
from training.phantoms import Grid
from training.synth.acquire import acquire, draw_acquisition
from training.synth.deform import deform, draw_deformation
from training.synth.hu import draw_oral_contrast, draw_phase, hu_table, render
from training.synth.kidney import place_kidney, varied_site
from training.synth.lesions import draw_lesions
from training.synth.sources import Sources
from training.synth.tissues import CORTEX, LEFT, MEDULLA, RIGHT
from training.synth.vessels import draw_renal_vessels
from training.synth.view import DEFAULT_GRID, OutputGrid, View, field_of_view, on_edge, view_shares
from training.synth_anatomy import CREDITS, Tissue


@dataclass(frozen=True)
class SynthCase:
    """A rendered case: HU image, ITK-SNAP labels (1 medulla, 2 cortex), full anatomy, grid and metadata."""

    image: np.ndarray  # float32 HU
    labels: np.ndarray  # uint8
    tissues: np.ndarray  # uint8 Tissue
    grid: Grid
    metadata: dict

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.grid.spacing


def make_synth_case(seed: int, sources: Sources, grid: OutputGrid = DEFAULT_GRID, no_kidney_share: float | None = None) -> SynthCase:
    """One synthetic case, deterministic from ``seed``; ``no_kidney_share`` is the chance of a field of view without
    kidney (default: view_shares's), the other views keeping their proportions."""
    rng = np.random.default_rng([seed, 20261202])
    anatomy = sources.anatomies[int(rng.integers(len(sources.anatomies)))]
    atlas = anatomy.atlas
    tissues_atlas = atlas.tissues.copy()
    deformation = draw_deformation(rng)
    growth = 1.0 / float(np.prod(deformation.scale))  # the deformation's change of volume
    lesions = draw_lesions(tissues_atlas, atlas, rng)
    sites = {side: varied_site(atlas.sites[side], rng) for side in (RIGHT, LEFT) if side in atlas.sites}
    kidneys = [place_kidney(tissues_atlas, atlas, site, sources.kidneys, growth, rng) for site in sites.values()]
    for kidney in kidneys:
        draw_renal_vessels(tissues_atlas, atlas, kidney, rng)
    view = View(rng.choice([v.value for v in View], p=view_shares(no_kidney_share)))
    out_grid, factors, view = field_of_view(tissues_atlas, atlas, grid, view, rng)
    work = deform(tissues_atlas, atlas, out_grid, factors, deformation, rng)
    phase = draw_phase(rng)
    oral = draw_oral_contrast(phase, rng)
    table = hu_table(phase, oral, rng)
    image_work = render(work, table, oral, rng)
    acquisition = draw_acquisition(rng)
    centre = tuple(slice((f - 1) // 2, None, f) for f in factors)
    image = acquire(image_work, work, factors, out_grid, acquisition, rng)
    tissues = np.ascontiguousarray(work[centre])
    labels = np.zeros(tissues.shape, np.uint8)
    labels[np.isin(tissues, tuple(MEDULLA.values()))] = 1
    labels[np.isin(tissues, tuple(CORTEX.values()))] = 2
    in_view = labels > 0  # the deformation moves the kidneys: say what the image shows
    view = View.NO_KIDNEY if not in_view.any() else View.CUT if on_edge(in_view) else View.KIDNEYS
    metadata = {
        "seed": seed,
        "phase": phase.value if phase is not None else "random",
        "intensities": "phase" if phase is not None else "random",
        "oral_contrast": oral,
        "hu": {t.name.lower(): round(float(v), 1) for t, v in zip(Tissue, table)},
        "anatomy": anatomy.name,
        "view": view.value,
        "lesions": _rounded(lesions),
        "kidneys": {k.side: _rounded(asdict(k)) for k in kidneys},
        "kits_cases": sorted({k.kits_case for k in kidneys}),
        "volumes_ml": volumes_ml(tissues, out_grid),
        "deformation": _rounded(asdict(deformation)),
        "acquisition": _rounded(asdict(acquisition)),
        "spacing_mm": list(out_grid.spacing),
        "shape_zyx": list(tissues.shape),
        "credits": [CREDITS[0], anatomy.credit],
    }
    return SynthCase(image, labels, tissues, out_grid, metadata)


def volumes_ml(tissues: np.ndarray, grid: Grid) -> dict[str, dict[str, float]]:
    """Cortex, medulla and parenchyma volume per side."""
    volumes = {}
    for side in (RIGHT, LEFT):
        cortex, medulla = (float(np.sum(tissues == t) * grid.voxel_ml) for t in (CORTEX[side], MEDULLA[side]))
        volumes[side] = {"cortex": round(cortex, 2), "medulla": round(medulla, 2), "parenchyma": round(cortex + medulla, 2)}
    return volumes


def write_synth_cases(folder: Path, seeds: list[int], sources: Sources, grid: OutputGrid = DEFAULT_GRID, no_kidney_share: float | None = None) -> list[Case]:
    """Write cases as NIfTI (image, ITK-SNAP labels, full anatomy, metadata JSON), a manifest and a README."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for seed in seeds:
        case = make_synth_case(seed, sources, grid, no_kidney_share)
        case_id = f"synth_{seed:05d}"
        image, labels = folder / f"{case_id}.nii.gz", folder / f"{case_id}_labels.nii.gz"
        sitk.WriteImage(to_sitk(np.clip(np.rint(case.image), -1024, 3071).astype(np.int16), case.grid), str(image))
        sitk.WriteImage(to_sitk(case.labels, case.grid), str(labels))
        sitk.WriteImage(to_sitk(case.tissues, case.grid), str(folder / f"{case_id}_anatomy.nii.gz"))
        (folder / f"{case_id}.json").write_text(json.dumps(case.metadata, indent=1))
        cases.append(Case(case_id, image, labels, group=case.metadata["phase"]))
    write_manifest(folder / "manifest.csv", cases)
    legend = "\n".join(f"- {t.value} {t.name.lower()}" for t in Tissue)
    (folder / "README.md").write_text(
        "# Synthetic renal CT cases (dicomnode-train synth)\n\n"
        "Labels: 0 background, 1 medulla, 2 cortex (parenchyma = 1 + 2). `*_anatomy.nii.gz` holds the full map:\n"
        f"{legend}\n\nCredits and licence (each case's JSON names its anatomy):\n"
        + "\n".join(f"- {line}" for line in (*CREDITS, *ANATOMY_CREDITS.values()))
        + "\n"
    )
    return cases


def _rounded(value):
    """A JSON-ready copy with floats rounded and tuples as lists."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_rounded(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return round(float(value), 3)
    return value.item() if isinstance(value, np.generic) else value
