"""The phantom generator is deterministic and anatomically consistent; the importer refuses bad labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from training.cases import Case, phantom_cases
from training.dataset_import import CaseError, case_labels, import_cases
from training.phantoms import Grid, Label, Phase, draw_anatomy, make_phantom, render

GRID = Grid.centred(96, 3.6, 30, 6.0)


def test_same_seed_same_phantom_other_seed_other_phantom() -> None:
    a, b, c = make_phantom(5, grid=GRID), make_phantom(5, grid=GRID), make_phantom(6, grid=GRID)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels)


def test_phases_share_anatomy_and_differ_in_enhancement() -> None:
    anatomy = draw_anatomy(8, ckd_stage=0)
    fine = Grid.centred(224, 1.6, 36, 5.0)  # the training grid: thin structures keep their contrast
    native, arterial, delayed = (render(anatomy, phase, fine) for phase in (Phase.NONCONTRAST, Phase.ARTERIAL, Phase.DELAYED))
    assert np.array_equal(native.labels, arterial.labels)
    mean = lambda p, label: p.image[p.labels == label].mean()  # noqa: E731
    assert mean(arterial, Label.AORTA) > 200 > mean(native, Label.AORTA)
    assert mean(arterial, Label.CORTEX) - mean(arterial, Label.MEDULLA) > 20  # after partial volume of 5 mm slices
    assert mean(delayed, Label.PELVIS) > 300


def test_ckd_shrinks_kidneys_and_thins_cortex() -> None:
    healthy = [draw_anatomy(s, ckd_stage=0) for s in range(10)]
    severe = [draw_anatomy(s, ckd_stage=3) for s in range(10)]
    assert np.mean([k.axes[0] for a in severe for k in a.kidneys]) < 0.85 * np.mean([k.axes[0] for a in healthy for k in a.kidneys])
    assert max(k.cortex_mm for a in severe for k in a.kidneys) < min(k.cortex_mm for a in healthy for k in a.kidneys)


def test_ground_truth_volumes_are_the_labels() -> None:
    phantom = make_phantom(12, grid=GRID)
    assert phantom.volumes_ml["parenchyma_left"] == pytest.approx(phantom.volumes_ml["cortex_left"] + phantom.volumes_ml["medulla_left"])
    cortex = (phantom.labels == Label.CORTEX).sum() * GRID.voxel_ml
    assert cortex == pytest.approx(phantom.volumes_ml["cortex_left"] + phantom.volumes_ml["cortex_right"])
    assert 40 < phantom.volumes_ml["parenchyma_left"] < 300


def test_import_refuses_a_label_on_another_grid_and_cortex_outside_parenchyma(tmp_path: Path) -> None:
    case = phantom_cases(tmp_path / "cases", [3], Phase.ARTERIAL, GRID)[0]
    image = sitk.ReadImage(str(case.image))
    labels = case_labels(case, image)
    assert set(np.unique(labels)) == {0, 1, 2}

    shifted = sitk.ReadImage(str(case.labels))
    shifted.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(shifted, str(tmp_path / "shifted.nii.gz"))
    with pytest.raises(CaseError, match="origin"):
        case_labels(Case("x", case.image, tmp_path / "shifted.nii.gz"), image)

    parenchyma = sitk.GetArrayFromImage(sitk.ReadImage(str(case.labels))) > 0
    empty = sitk.GetImageFromArray(np.zeros(parenchyma.shape, np.uint8))
    empty.CopyInformation(image)
    everywhere = sitk.GetImageFromArray(np.ones(parenchyma.shape, np.uint8))
    everywhere.CopyInformation(image)
    sitk.WriteImage(everywhere, str(tmp_path / "cortex.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(parenchyma.astype(np.uint8)), str(tmp_path / "bad-grid.nii.gz"))
    mask = sitk.GetImageFromArray(parenchyma.astype(np.uint8))
    mask.CopyInformation(image)
    sitk.WriteImage(mask, str(tmp_path / "parenchyma.nii.gz"))
    with pytest.raises(CaseError, match="outside the parenchyma"):
        case_labels(Case("x", case.image, parenchyma=tmp_path / "parenchyma.nii.gz", cortex=tmp_path / "cortex.nii.gz"), image)

    dataset = import_cases([case], tmp_path / "raw", 7, "One")
    assert (dataset.folder / "labelsTr" / f"{case.case_id}.nii.gz").exists() and dataset.groups == {case.case_id: case.group}


def test_import_reads_a_dicom_series_folder_with_the_node_checks(tmp_path: Path) -> None:
    from training.dataset_import import read_image
    from training.phantom_dicom import write_study

    series = write_study(14, tmp_path / "study", phases=(Phase.ARTERIAL,), grid=GRID).series[0]
    image = read_image(series.files[0].parent)
    assert np.array_equal(sitk.GetArrayFromImage(image), series.phantom.image.astype(np.float32))
    assert np.allclose(image.GetOrigin(), GRID.origin, atol=1e-3) and np.allclose(image.GetSpacing(), GRID.spacing)
    series.files[4].unlink()
    with pytest.raises(CaseError, match="missing slices"):
        read_image(series.files[0].parent)
