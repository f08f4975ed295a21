"""Synthetic cases on real anatomy: sides, shell-shaped cortex, phase contrast, determinism, attribution, files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from tests.peers import SHARED
from training.anatomies import VALIDATION, anatomy_sources, tissue_of
from training.cases import read_manifest
from training.dataset_import import case_labels, read_image
from training.synth import CORTEX, MEDULLA, AnatomySet, OutputGrid, View, anatomy_names, load_sources, make_synth_case, write_synth_cases
from training.synth_anatomy import Tissue, lps_volume, principal_axis

KITS_SUBSET = tuple(f"case_{i:05d}" for i in range(6))
OUTSIDE_KIDNEY = (
    Tissue.OUTSIDE,
    Tissue.TABLE,
    Tissue.FAT,
    Tissue.MUSCLE,
    Tissue.VISCERA,
    Tissue.LIVER,
    Tissue.SPLEEN,
    Tissue.PSOAS,
    Tissue.COLON,
    Tissue.SMALL_BOWEL,
    Tissue.DUODENUM,
    Tissue.RENAL_MASS,
    Tissue.GAS,
)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    if not SHARED.exists():
        pytest.skip(f"{SHARED} is absent: no real anatomy or KiTS19 labels to build cases from")
    return load_sources(SHARED / "data", tmp_path_factory.mktemp("synth_cache"), KITS_SUBSET, AnatomySet.SHARED)


@pytest.fixture(scope="module")
def cases(sources):
    """Three cases with both kidneys whole in view, the first in the arterial phase."""
    whole = (c for c in (make_synth_case(seed, sources) for seed in range(100, 140)) if c.metadata["view"] == View.KIDNEYS.value)
    arterial = next(c for c in (make_synth_case(seed, sources) for seed in range(60)) if _arterial_with_contrast(c.metadata))
    return [arterial, next(whole), next(whole)]


def _arterial_with_contrast(metadata: dict) -> bool:
    """Arterial, both kidneys in view, and the cortex drawn at least 60 HU above the medulla (most arterial cases; a
    share has weak corticomedullary contrast on purpose)."""
    hu = metadata["hu"]
    strong = all(hu[f"cortex_{side}"] - hu[f"medulla_{side}"] >= 60 for side in ("right", "left"))
    return metadata["phase"] == "arterial" and metadata["view"] == View.KIDNEYS.value and strong


def _x_mm(case, mask: np.ndarray) -> float:
    return float(np.argwhere(mask)[:, 2].mean() * case.spacing[0] + case.grid.origin[0])


def test_kidneys_inside_the_body_on_their_own_sides(cases) -> None:
    for case in cases:
        tissues = case.tissues
        body = ~np.isin(tissues, (Tissue.OUTSIDE, Tissue.TABLE))
        assert case.labels.any() and not (case.labels > 0)[~body].any()
        spine = _x_mm(case, tissues == Tissue.VERTEBRA)
        right, left = (_x_mm(case, np.isin(tissues, (CORTEX[s], MEDULLA[s]))) for s in ("right", "left"))
        # LPS: +x is the patient's left; the liver lies on the right, the spleen on the left.
        assert right < spine < left
        assert _x_mm(case, tissues == Tissue.LIVER) < spine < _x_mm(case, tissues == Tissue.SPLEEN)
        for side in ("right", "left"):
            assert 40 < case.metadata["volumes_ml"][side]["parenchyma"] < 500


def test_cortex_is_an_outer_shell_of_plausible_share(cases) -> None:
    for case in cases:
        for side in ("right", "left"):
            cortex, medulla = case.tissues == CORTEX[side], case.tissues == MEDULLA[side]
            parenchyma = cortex | medulla
            outside = np.isin(case.tissues, OUTSIDE_KIDNEY)
            in_plane = np.zeros((3, 3, 3), bool)
            in_plane[1] = ndimage.generate_binary_structure(2, 1)
            border = parenchyma & ndimage.binary_dilation(outside, in_plane)
            assert cortex[border].mean() > 0.85, f"{side}: the kidney's outer border is not mostly cortex"
            kidney = parenchyma | np.isin(case.tissues, (Tissue.RENAL_SINUS, Tissue.RENAL_PELVIS))
            depth = ndimage.distance_transform_edt(kidney, sampling=case.spacing[::-1])
            assert np.median(depth[cortex]) < np.median(depth[medulla]), f"{side}: the cortex does not lie outside the medulla"
            assert 0.3 < cortex.sum() / parenchyma.sum() < 0.8
            assert (case.labels[cortex] == 2).all() and (case.labels[medulla] == 1).all()


#: A coarser output than the training cases' (their draws and views are the same): for tests that read what a case's
#: draws were or which view it shows, not its pixels.
COARSE = OutputGrid((3.2, 3.2, 5.0), (72, 128, 128), (3.4, 3.4, 4.0))


def test_arterial_corticomedullary_contrast_spans_none_to_strong(sources) -> None:
    metadata = [make_synth_case(seed, sources, COARSE).metadata for seed in range(200, 220)]
    differences = [m["hu"][f"cortex_{s}"] - m["hu"][f"medulla_{s}"] for m in metadata if m["phase"] == "arterial" for s in ("right", "left")]
    assert min(differences) < 40 and max(differences) > 100 and np.median(differences) > 60


def test_arterial_cortex_enhances_more_than_medulla(cases) -> None:
    case = cases[0]
    for side in ("right", "left"):
        cortex = np.median(case.image[case.tissues == CORTEX[side]])
        medulla = np.median(case.image[case.tissues == MEDULLA[side]])
        assert cortex - medulla > 25, (side, cortex, medulla)  # drawn 60 HU or more apart, then blurred by the scan
    assert np.median(case.image[case.tissues == Tissue.AORTA]) > 180
    assert -130 < np.median(case.image[case.tissues == Tissue.FAT]) < -50


def test_same_seed_same_case_other_seed_other_case(sources, cases) -> None:
    again = make_synth_case(cases[1].metadata["seed"], sources)
    assert np.array_equal(again.image, cases[1].image) and np.array_equal(again.labels, cases[1].labels)
    assert again.metadata == cases[1].metadata
    assert cases[1].image.shape != cases[2].image.shape or not np.array_equal(cases[1].image, cases[2].image)


def test_kits_kidneys_are_attributed(sources, cases) -> None:
    pool = {k.case_id for k in sources.kidneys}
    for case in cases:
        kidneys = case.metadata["kidneys"]
        assert {kidneys["right"]["kits_case"], kidneys["left"]["kits_case"]} == set(case.metadata["kits_cases"]) <= pool
        assert any("KiTS19" in line and "CC BY-NC-SA 4.0" in line for line in case.metadata["credits"])
        assert any("TotalSegmentator" in line and "Apache-2.0" in line for line in case.metadata["credits"])


def test_kits_kidneys_have_upper_poles_towards_the_midline(sources) -> None:
    """A check of the KiTS axis order and signs: the long axis, pointing up, leans medially."""
    leaning = []
    for kidney in sources.kidneys:
        points = np.argwhere(kidney.labels == 1)[:, ::-1].astype(float)
        axis = principal_axis(points - points.mean(axis=0))
        leaning.append(axis[0] < 0 if kidney.side == "left" else axis[0] > 0)
    assert len(leaning) >= 8 and np.mean(leaning) >= 0.75


def test_lps_volume_reorders_kits_like_axes() -> None:
    """KiTS files store slices first, towards the feet; the array must come out [z up, y back, x left]."""
    array = np.zeros((4, 5, 6), np.uint8)  # sitk size (6, 5, 4): i = slices, j = rows, k = columns
    array[1, 2, 3] = 1
    image = sitk.GetImageFromArray(array)
    image.SetDirection((0, 0, 1, 0, 1, 0, -1, 0, 0))
    image.SetSpacing((2.5, 0.8, 0.7))
    image.SetOrigin((10.0, -20.0, 30.0))
    volume = lps_volume(image)
    expected = np.array(image.TransformIndexToPhysicalPoint((3, 2, 1)))
    found = np.argwhere(volume.array)[0][::-1] * np.array(volume.spacing) + np.array(volume.origin)
    assert volume.array.shape == (6, 5, 4) and np.allclose(found, expected)


def test_written_cases_load_and_import(sources, tmp_path: Path) -> None:
    cases = write_synth_cases(tmp_path / "synth", [7], sources)
    manifest = read_manifest(tmp_path / "synth" / "manifest.csv")
    assert [c.case_id for c in manifest] == ["synth_00007"] and manifest[0].group == cases[0].group
    image = read_image(manifest[0].image)
    assert image.GetSpacing() == pytest.approx((1.6, 1.6, 5.0)) and image.GetSize()[2] <= 64
    labels = case_labels(manifest[0], image)
    assert set(np.unique(labels)) == {0, 1, 2}
    metadata = json.loads((tmp_path / "synth" / "synth_00007.json").read_text())
    assert metadata["phase"] == manifest[0].group and metadata["kits_cases"]
    assert "KiTS19" in (tmp_path / "synth" / "README.md").read_text()


# --- many anatomies (synthetic data v3) ----------------------------------------------------------------------------

ANATOMY = SHARED / "data" / "anatomy"
#: One anatomy of each source that has kidneys, and the one without.
MANY = ("word_0014", "s0001", "amos_0013", "s0000")


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    if not ANATOMY.exists():
        pytest.skip(f"{ANATOMY} is absent")
    return load_sources(SHARED / "data", tmp_path_factory.mktemp("many_cache"), KITS_SUBSET, MANY)


def test_every_label_of_every_source_is_mapped_to_a_tissue() -> None:
    if not ANATOMY.exists():
        pytest.skip(f"{ANATOMY} is absent")
    sources = anatomy_sources(ANATOMY)
    assert {s.source for s in sources} == {"word", "totalsegmentator", "amos"} and len(sources) == 37
    unmapped = {name for s in sources for name in s.labels.values() if tissue_of(name) is None and not name.startswith("kidney")}
    assert unmapped == set()


def test_validation_anatomies_are_kept_out_of_training() -> None:
    if not ANATOMY.exists():
        pytest.skip(f"{ANATOMY} is absent")
    found = {s.name: s for s in anatomy_sources(ANATOMY)}
    train, validation = anatomy_names(found, AnatomySet.TRAIN), anatomy_names(found, AnatomySet.VALIDATION)
    assert validation == list(VALIDATION) and not set(train) & set(validation)
    assert "real_ct" in train and len(train) + len(validation) == len(found) + 1


def test_a_word_anatomy_gets_what_its_source_lacks(many) -> None:
    """WORD labels organs only: the generator adds spine, psoas, aorta left of the IVC, body wall and fat."""
    atlas = next(a.atlas for a in many.anatomies if a.name == "word_0014")
    tissues = atlas.tissues
    assert 255 not in np.unique(tissues)  # nothing left unlabelled
    for tissue in (Tissue.VERTEBRA, Tissue.SPINAL_CANAL, Tissue.PSOAS, Tissue.AORTA, Tissue.IVC, Tissue.FAT, Tissue.MUSCLE, Tissue.OUTSIDE):
        assert (tissues == tissue).any(), tissue.name

    def x_mm(tissue: Tissue) -> float:
        return float(np.argwhere(tissues == tissue)[:, 2].mean() * 1.5 + atlas.origin[0])

    sites = atlas.sites
    assert sites["right"].centre[0] < x_mm(Tissue.VERTEBRA) < sites["left"].centre[0]
    assert x_mm(Tissue.IVC) < x_mm(Tissue.AORTA)  # LPS: the IVC on the patient's right
    assert not np.isin(tissues, (Tissue.CORTEX_LEFT, Tissue.CORTEX_RIGHT)).any()  # its own kidneys were taken out
    assert 80 < sites["left"].volume_ml < 250 and 80 < sites["right"].volume_ml < 250


def test_cases_without_kidney_cut_kidneys_and_lesions_are_made(many) -> None:
    cases = [make_synth_case(seed, many, COARSE) for seed in range(24)]
    views = {case.metadata["view"] for case in cases}
    assert views == {v.value for v in View}
    assert {case.metadata["anatomy"] for case in cases} == set(MANY)
    for case in cases:
        kidney = case.labels > 0
        if case.metadata["view"] == View.NO_KIDNEY.value:
            assert not kidney.any() and not np.isin(case.tissues, tuple(CORTEX.values())).any()
        else:
            assert kidney.any()
        on_edge = kidney[0].any() or kidney[-1].any() or kidney[:, 0].any() or kidney[:, -1].any() or kidney[:, :, 0].any() or kidney[:, :, -1].any()
        assert on_edge == (case.metadata["view"] == View.CUT.value)
        lesion = case.tissues == Tissue.LESION
        if lesion.any():  # inside the liver or spleen: never in the kidney's labels
            assert not (case.labels[lesion] > 0).any()
    assert any((case.tissues == Tissue.LESION).any() for case in cases)
