"""dcmqi, the reader 3D Slicer uses, reads the node's SEG into per-segment masks that equal the node's own masks
voxel for voxel on the CT's grid, and reads the SR's TID 1500 measurements back as the node measured them.

The prediction is the phantom's own labels, so the test needs no model and knows every mask in advance."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import CTImageStorage

from dicomnode.config import NodeConfig
from dicomnode.imaging.load import LoadedSeries
from dicomnode.instance import Instance
from dicomnode.node.pipeline import Processed, process_study
from dicomnode.outbound.save import save_results
from dicomnode.segment.model import Segmentation
from dicomnode.store.states import Outcome
from tests.peers import dciodvfy
from tests.readback import sr_groups
from tests.standins import PhantomLabels
from training.phantom_dicom import SeriesFiles, write_study
from training.phantoms import Grid, Label, Phase

BIN = Path(shutil.which("segimage2itkimage") or Path(__file__).resolve().parent.parent / ".venv" / "bin" / "segimage2itkimage").parent
pytestmark = pytest.mark.skipif(not (BIN / "segimage2itkimage").exists(), reason="dcmqi not installed")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[SeriesFiles, Processed, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("dcmqi")
    series = write_study(4242, folder / "ct", phases=(Phase.ARTERIAL,), grid=Grid.centred(200, 1.6, 36, 5.0)).series[0]
    instances = [Instance(i, f.name, "study", "series", CTImageStorage, f) for i, f in enumerate(series.files)]
    processed = process_study(instances, NodeConfig(), PhantomLabels(series))
    assert processed.outcome is Outcome.RESULT, processed.reasons
    assert processed.results is not None
    saved = {f.output.value: f.path for f in save_results(processed.results, folder / "results")}
    return series, processed, saved


def test_segimage2itkimage_masks_equal_the_nodes_masks_voxel_for_voxel(results, tmp_path: Path) -> None:
    series, processed, saved = results
    out = tmp_path / "masks"
    out.mkdir()
    run = subprocess.run(
        [str(BIN / "segimage2itkimage"), "--inputDICOM", str(saved["seg"]), "--outputDirectory", str(out), "-t", "nrrd"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    meta = json.loads((out / "meta.json").read_text())
    labels = {int(s["labelID"]): s["SegmentLabel"].lower() for group in meta["segmentAttributes"] for s in group}
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in series.files])
    ct = reader.Execute()  # the CT grid, slices ordered along their normal as the node orders them
    assert processed.measurements is not None
    checked = 0
    for number, label in labels.items():
        side, _, structure = label.split(" ")
        image = sitk.Resample(sitk.ReadImage(str(out / f"{number}.nrrd")), ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        theirs = sitk.GetArrayFromImage(image) > 0
        ours = processed.measurements.kidneys[side].mask(structure)
        assert theirs.shape == ours.shape and ours.any()
        assert np.array_equal(theirs, ours), f"{label}: {np.sum(theirs != ours)} voxels differ"
        checked += 1
    assert checked == 6


def test_tid1500reader_reads_the_measurements_the_node_made(results, tmp_path: Path) -> None:
    _, processed, saved = results
    out = tmp_path / "sr.json"
    run = subprocess.run([str(BIN / "tid1500reader"), "--inputDICOM", str(saved["sr"]), "--outputMetadata", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    groups = {m["TrackingIdentifier"]: m for m in json.loads(out.read_text())["Measurements"]}
    assert processed.measurements is not None
    expected = {f"{side} renal {s}": k.volume(s) for side, k in processed.measurements.kidneys.items() for s in ("cortex", "medulla", "parenchyma")}
    volumes = {name: float(g["measurementItems"][0]["value"]) for name, g in groups.items() if g.get("measurementItems")}
    assert volumes == pytest.approx(expected, abs=1e-3)
    for name, group in groups.items():
        if name in expected:
            assert group["measurementItems"][0]["units"]["CodeValue"] == "cm3"
            assert group["Laterality"]["CodeMeaning"].lower() == name.split(" ")[0]


def test_the_sr_lists_the_measured_images_in_its_image_library(results) -> None:
    series, processed, _ = results
    sr = processed.results.sr
    [library] = [item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "111028"]  # DCM Image Library
    entries = [entry for group in library.ContentSequence for entry in group.ContentSequence if entry.ValueType == "IMAGE"]
    uids = {entry.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for entry in entries}
    # the slices a kidney lies on, from the phantom's truth, matched to the files by their position along z
    grid = series.phantom.grid
    on_kidney = np.isin(series.phantom.labels, [Label.CORTEX, Label.MEDULLA]).any(axis=(1, 2))
    truth_z = {round(float(grid.origin[2] + k * grid.spacing[2]), 2) for k in np.nonzero(on_kidney)[0]}
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in series.files]
    expected = {h.SOPInstanceUID for h in headers if round(float(h.ImagePositionPatient[2]), 2) in truth_z}
    assert 0 < len(uids) < len(headers) and uids == expected


class RightKidneyOnly(PhantomLabels):
    """The phantom's true labels on the patient's right half only (LPS: the right kidney lies at smaller x)."""

    def segment(self, series: LoadedSeries) -> Segmentation:
        segmentation = super().segment(series)
        segmentation.labels[:, :, segmentation.labels.shape[2] // 2 :] = 0
        return segmentation


def test_a_solitary_kidney_sr_reads_back_with_the_absent_side_named(tmp_path: Path) -> None:
    """One kidney found: dcmqi reads the right kidney's three volumes and nothing of the left; highdicom's reading of
    the same SR has the study group say that no left kidney was found; dciodvfy passes both objects."""
    series = write_study(4243, tmp_path / "ct", phases=(Phase.ARTERIAL,), grid=Grid.centred(200, 1.6, 36, 5.0)).series[0]
    instances = [Instance(i, f.name, "study", "series", CTImageStorage, f) for i, f in enumerate(series.files)]
    processed = process_study(instances, NodeConfig(), RightKidneyOnly(series))
    assert processed.outcome is Outcome.RESULT and processed.results is not None, processed.reasons
    saved = {f.output.value: f.path for f in save_results(processed.results, tmp_path / "results")}
    out = tmp_path / "sr.json"
    run = subprocess.run([str(BIN / "tid1500reader"), "--inputDICOM", str(saved["sr"]), "--outputMetadata", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    measured = {m["TrackingIdentifier"] for m in json.loads(out.read_text())["Measurements"] if m.get("measurementItems")}
    assert measured == {f"right renal {s}" for s in ("cortex", "medulla", "parenchyma")}
    study = next(g for g in sr_groups(pydicom.dcmread(saved["sr"])) if not g.segment_number)
    assert "Left kidney not reported: no kidney was found on this side" in study.findings
    for path in saved.values():
        assert dciodvfy(path) == [], path.name
