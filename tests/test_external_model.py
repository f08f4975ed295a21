"""Parenchyma from an nnU-Net v2 model trained elsewhere, laid out and prepared as TotalSegmentator's are, with the
project's cortex inside it: the training CLI builds such a results folder, and a node configured for it sends SEG
and SR whose parenchyma matches the phantom's truth with the sides right, also for a series stored in another
orientation than the training data; a wrong label map or folder is refused with the reason."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomnode.analysis.measure import measure
from dicomnode.analysis.qc import Rule, check
from dicomnode.config import ExternalModelConfig, QCConfig, load_config
from dicomnode.imaging.aorta import ImagePhase
from dicomnode.imaging.load import LoadedSeries
from dicomnode.options import CortexMethod
from dicomnode.segment.cortex import split_cortex
from dicomnode.segment.external import ExternalModel, ExternalSegmenter
from dicomnode.segment.model import Model, ModelSide, Segmentation
from tests.peers import REPO, NodeFactory, Orthanc, dciodvfy, storescu, tools_missing, wait_for
from tests.readback import dice, seg_masks, sr_groups, sr_texts
from tests.training_cli import TINY, cli_env, tiny_training, training_cli
from training.phantom_dicom import StudyFiles, write_study
from training.phantoms import Grid, Phase, make_phantom

#: A stand-in for TotalSegmentator's ``total --fast`` model (3 mm, RAS, kidney_right 2, kidney_left 3), trained by
#: the project's CLI on 40 phantoms; how it was made: tests/data/totalseg_standin/README.md.
STANDIN = (
    REPO / "tests" / "data" / "totalseg_standin" / "Dataset297_TotalSegStandInFast" / "nnUNetTrainerPaper_NoMirroring_40epochs_100it__nnUNetPlans__3d_cpu_iso"
)
GRID = Grid.centred(224, 1.6, 36, 5.0)


def _external(**changes: Any) -> ExternalModel:
    settings = replace(ExternalModelConfig(folder=str(STANDIN), name="TotalSegmentator stand-in", version="test", spacing_mm=3.0), **changes)
    return ExternalModel.from_config(settings, Path(settings.folder))


def test_training_cli_builds_a_results_folder_the_way_totalsegmentator_lays_out_its_models(tmp_path: Path) -> None:
    env = cli_env()

    def cli(*args: str) -> str:
        return training_cli(*args, env=env)

    work = tmp_path / "work"
    cli("phantoms", "--out", str(tmp_path / "cases"), "--count", "4", "--seed", "20", *TINY)
    cli(
        "import",
        "--manifest",
        str(tmp_path / "cases" / "manifest.csv"),
        "--work",
        str(work),
        "--dataset-id",
        "991",
        "--name",
        "TS",
        "--convention",
        "totalsegmentator",
        "--spacing-mm",
        "6",
    )
    raw = work / "raw" / "Dataset991_TS"
    assert json.loads((raw / "dataset.json").read_text())["labels"] == {"background": 0, "spleen": 1, "kidney_right": 2, "kidney_left": 3}
    trainer = "nnUNetTrainerPaper_NoMirroring_1epoch_3it"
    cli(*tiny_training(str(work), "991", trainer))
    folder = work / "results" / "Dataset991_TS" / f"{trainer}__nnUNetPlans__3d_tiny"
    external = ExternalModel.from_config(ExternalModelConfig(folder=str(folder), spacing_mm=6.0), folder)
    assert external.problems() == []
    assert external.label_names() == {0: "background", 1: "spleen", 2: "kidney_right", 3: "kidney_left"}
    segmenter = ExternalSegmenter(external, CortexMethod.INTENSITY, None, "cpu")
    assert segmenter.predictor.trainer_name == trainer
    phantom = make_phantom(21, grid=Grid.centred(64, 5.6, 20, 8.0))
    series = LoadedSeries([], phantom.image.astype(np.float32), np.array(phantom.grid.origin), np.array(phantom.grid.spacing), np.eye(3))
    segmentation = segmenter.segment(series)  # one epoch of three iterations: the masks mean nothing, the grid does
    assert segmentation.labels.shape == series.hu.shape and segmentation.sides is not None and segmentation.sides.shape == series.hu.shape


def test_a_wrong_folder_or_label_map_is_refused_with_the_reason(tmp_path: Path) -> None:
    assert _external().problems() == []
    assert any("right_label: 7 is not a label" in p and "kidney_right=2" in p for p in _external(right_label=7).problems())
    with pytest.raises(ValueError, match="left_label: is the right_label"):
        _external(left_label=2)
    assert "fold_3" in _external(fold="3").problems()[0]
    config = tmp_path / "config.yaml"
    config.write_text("model:\n  parenchyma: external\n  external:\n    folder: nowhere\n")
    with pytest.raises(ValueError, match=r"model\.external\.folder: .*nowhere/dataset.json not found"):
        load_config(config)
    config.write_text("model:\n  parenchyma: totalseg\n")
    with pytest.raises(ValueError, match="model.parenchyma: 'totalseg' is not one of project, external"):
        load_config(config)
    config.write_text("model:\n  external:\n    orientation: RAI\n")
    with pytest.raises(ValueError, match="model.external.orientation: 'RAI' is not one of RAS, LPS"):
        load_config(config)


def test_qc_flags_a_kidney_the_model_put_on_the_other_side() -> None:
    """Where the model's own side labels disagree with the anatomy, QC says so (a flipped convention or a bad model)."""
    phantom = make_phantom(4243, grid=GRID, ckd_stage=0)
    series = LoadedSeries([], phantom.image.astype(np.float32), np.array(GRID.origin), np.array(GRID.spacing), np.eye(3))
    labels = np.where(phantom.kidney_mask("left", "cortex") | phantom.kidney_mask("right", "cortex"), 2, 0).astype(np.uint8)
    labels[(phantom.kidney_mask("left", "medulla") | phantom.kidney_mask("right", "medulla"))] = 1
    model = Model.from_folder(REPO / "models" / "renal-synth-cpu")
    right_as_right = np.where(
        phantom.kidney_mask("right", "parenchyma"), ModelSide.RIGHT, np.where(phantom.kidney_mask("left", "parenchyma"), ModelSide.LEFT, 0)
    )
    swapped = np.where(right_as_right == ModelSide.RIGHT, ModelSide.LEFT, np.where(right_as_right == ModelSide.LEFT, ModelSide.RIGHT, 0))
    for sides, model_sides, flagged in ((right_as_right, ("left", "right"), set()), (swapped, ("right", "left"), {"left", "right"})):
        measured = measure(series, Segmentation(labels, model, "cpu", sides=sides.astype(np.uint8)))
        assert (measured.kidneys["left"].model_side, measured.kidneys["right"].model_side) == model_sides
        report = check(measured, ImagePhase.ARTERIAL, QCConfig())
        assert {f.scope for f in report.findings if f.rule is Rule.MODEL_SIDE} == flagged


def test_intensity_split_finds_an_enhancing_cortex_around_a_darker_medulla() -> None:
    """A kidney of 180 HU cortex (5 mm shell) around 80 HU pyramids, with noise: cortex volume within 10 %."""
    rng = np.random.default_rng(3)
    z, y, x = np.mgrid[:24, :80, :80]
    spacing = (2.0, 1.0, 1.0)
    radius = np.sqrt(((z - 12) * 2.0 / 1.6) ** 2 + ((y - 40) / 1.2) ** 2 + ((x - 40) / 0.9) ** 2)
    kidney, medulla = radius < 30, radius < 25
    hu = np.where(medulla, 80.0, np.where(kidney, 180.0, -100.0)) + rng.normal(0, 15, kidney.shape)
    cortex = split_cortex(hu.astype(np.float32), [kidney], spacing)
    truth = kidney & ~medulla
    assert not (cortex & ~kidney).any()
    assert cortex.sum() == pytest.approx(truth.sum(), rel=0.10)
    assert dice(cortex, truth) > 0.85


def _reoriented_study(study: StudyFiles, folder: Path) -> str:
    """The study copied into ``folder`` under new UIDs with rows and columns stored in reverse (ImageOrientationPatient
    -1 0 0 0 -1 0): the same patient, another orientation than the training data. Returns the copy's study UID."""
    study_uid = generate_uid()
    series_uids = {s.series_uid: generate_uid() for s in study.series}
    folder.mkdir(parents=True)
    for series in study.series:
        for path in series.files:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array[::-1, ::-1]
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            rows_mm, columns_mm = (float(v) for v in ds.PixelSpacing)
            ds.ImagePositionPatient = [f"{x + (ds.Columns - 1) * columns_mm:.4f}", f"{y + (ds.Rows - 1) * rows_mm:.4f}", f"{z:.4f}"]
            ds.ImageOrientationPatient = [-1, 0, 0, 0, -1, 0]
            ds.PixelData = np.ascontiguousarray(pixels).tobytes()
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uids[series.series_uid]
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.save_as(folder / f"{series_uids[series.series_uid][-12:]}_{path.name}", enforce_file_format=True)
    return study_uid


@pytest.mark.slow
@pytest.mark.skipif(bool(tools_missing()), reason=f"missing tools: {tools_missing()}")
def test_node_sends_external_parenchyma_with_the_projects_cortex_and_the_sides_right(tmp_path: Path, node_process: NodeFactory, orthanc: Orthanc) -> None:
    study = write_study(7301, tmp_path / "study", grid=GRID)
    flipped_uid = _reoriented_study(study, tmp_path / "flipped")
    orthanc.start()
    model = {
        "folder": str(REPO / "models"),
        "name": "renal-synth-cpu",
        "device": "cpu",
        "parenchyma": "external",
        "cortex": "model",
        "external": {"folder": str(STANDIN), "name": "TotalSegmentator stand-in", "version": "test", "spacing_mm": 3.0, "licence": "test data"},
    }
    node = node_process(tmp_path / "node", [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}], extra={"model": model})
    node.start()
    files = [f for series in study.series for f in series.files]
    assert storescu(node.port, node.ae_title, files).returncode == 0
    assert storescu(node.port, node.ae_title, sorted((tmp_path / "flipped").iterdir())).returncode == 0
    wait_for(lambda: len(orthanc.instances_of_modality("SEG")) == 2 and len(orthanc.instances_of_modality("SR")) == 2, 900, 1.0, "two SEG and two SR")
    arterial = study.by_phase(Phase.ARTERIAL)
    for n, (seg_id, sr_id) in enumerate(zip(sorted(orthanc.instances_of_modality("SEG")), sorted(orthanc.instances_of_modality("SR")))):
        seg_path, sr_path = orthanc.download(seg_id, tmp_path / f"seg{n}.dcm"), orthanc.download(sr_id, tmp_path / f"sr{n}.dcm")
        assert dciodvfy(seg_path) == [] and dciodvfy(sr_path) == []
        seg = pydicom.dcmread(seg_path)
        flipped = seg.StudyInstanceUID == flipped_uid
        source = sorted(_sources(tmp_path / ("flipped" if flipped else "study"), seg), key=lambda ds: float(ds.ImagePositionPatient[2]))
        masks = seg_masks(seg_path, [ds.SOPInstanceUID for ds in source])
        labels = {int(s.SegmentNumber): s.SegmentLabel.lower() for s in seg.SegmentSequence}
        for side in ("left", "right"):
            truth = arterial.phantom.kidney_mask(side, "parenchyma")
            truth = truth[:, ::-1, ::-1] if flipped else truth
            number = next(k for k, label in labels.items() if label == f"{side} renal parenchyma")
            score = dice(masks[number], truth)
            print(f"\n{'flipped' if flipped else 'as trained'} {side}: parenchyma Dice {score:.3f}")
            assert score >= 0.9, (side, flipped, score)
        algorithms = {s.SegmentLabel.split()[-1]: s.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName for s in seg.SegmentSequence}
        assert algorithms == {"parenchyma": "TotalSegmentator stand-in", "cortex": "renal-synth-cpu", "medulla": "renal-synth-cpu"}
        sr = pydicom.dcmread(sr_path)
        for ds in (seg, sr):  # besides the source's scanner and highdicom, one item per algorithm
            names = {e.ManufacturerModelName for e in ds.ContributingEquipmentSequence}
            assert names >= {"TotalSegmentator stand-in", "renal-synth-cpu"}, names
        assert "parenchyma: TotalSegmentator stand-in" in sr_texts(sr)
        groups = [g for g in sr_groups(sr) if g.segment_number]
        assert all(g.qc == "Usable - Meets the quality control standard" for g in groups), [g.findings for g in groups]


def _sources(folder: Path, seg: pydicom.Dataset) -> list[pydicom.Dataset]:
    """The headers of the series (under ``folder``) a SEG was made from."""
    series_uid = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    headers = (pydicom.dcmread(p, stop_before_pixels=True) for p in folder.rglob("*.dcm"))
    return [ds for ds in headers if ds.SeriesInstanceUID == series_uid]
