"""Real pixels through the node: a real CT sent by storescu must give right volumes on the right sides, or none.

The shared real CT is non-contrast (its header here claims arterial). Its reference kidney masks were made by a
model (TotalSegmentator), not by hand: right 188.8 ml, left 138.9 ml.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from dicomnode.pipeline import WITHHELD
from tests.peers import REAL_CT as REAL
from tests.peers import NodeFactory, Orthanc, dciodvfy, storescu, tools_missing, wait_for
from tests.readback import dice, seg_masks, sr_groups, sr_texts, sr_volumes
from training.volume_dicom import SeriesTags, write_volume_series

pytestmark = [
    pytest.mark.skipif(bool(tools_missing()), reason=f"missing tools: {tools_missing()}"),
    pytest.mark.skipif(not REAL.exists(), reason="shared real CT not present"),
    pytest.mark.slow,
]


def _reference(side: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(REAL / "example_ct_labels" / f"kidney_{side}.nii.gz"))) > 0


def _study_results(orthanc: Orthanc, study_uid: str, folder: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {"SEG": [], "SR": []}
    for modality in found:
        for instance in orthanc.instances_of_modality(modality):
            path = orthanc.download(instance, folder / f"{modality}_{instance}.dcm")
            if pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID == study_uid:
                found[modality].append(path)
    return found


def _check_sent_result(results: dict[str, list[Path]], source: list[Path]) -> None:
    """A result that reached the PACS: both kidneys on the right sides, volumes within 15 %, Dice >= 0.80."""
    seg_path, sr_path = results["SEG"][0], results["SR"][0]
    assert dciodvfy(seg_path) == [] and dciodvfy(sr_path) == []
    seg = pydicom.dcmread(seg_path)
    masks = seg_masks(seg_path, [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in source])
    labels = {int(s.SegmentNumber): s.SegmentLabel.lower() for s in seg.SegmentSequence}
    volumes = {g.identifier: g.volume_ml for g in sr_groups(pydicom.dcmread(sr_path)) if g.segment_number}
    for side, reference_ml in (("right", 188.8), ("left", 138.9)):
        assert volumes[f"{side} renal parenchyma"] == pytest.approx(reference_ml, rel=0.15), side
        number = next(n for n, label in labels.items() if label == f"{side} renal parenchyma")
        assert dice(masks[number], _reference(side)) >= 0.80, side


def test_real_ct_gives_right_volumes_or_none(tmp_path: Path, node_process: NodeFactory, orthanc: Orthanc) -> None:
    image = sitk.ReadImage(str(REAL / "example_ct.nii.gz"))
    studies = {
        shift: write_volume_series(image, tmp_path / f"ct_{shift:+.0f}", SeriesTags(study_seed=f"real-ct{shift}"), (shift, 0.0, 0.0))
        for shift in (0.0, 100.0)  # origin as in the file, and the patient 100 mm off the scanner's centre
    }
    orthanc.start()
    node = node_process(
        tmp_path / "node",
        [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}],
        extra={"send_text_sr_without_result": True},
    )
    node.start()
    for files in studies.values():
        sent = storescu(node.port, node.ae_title, files)
        assert sent.returncode == 0, sent.stderr
    wait_for(lambda: len(node.jobs()) == 2 and all(j["state"] == "done" for j in node.jobs()), 900, 2.0, "both jobs to end")
    wait_for(lambda: all(j["delivery"] != "sending" for j in node.status()), 60, 1.0, "deliveries")
    for job in node.status():
        files = next(f for f in studies.values() if pydicom.dcmread(f[0], stop_before_pixels=True).StudyInstanceUID == job["study_uid"])
        results = _study_results(orthanc, job["study_uid"], tmp_path)
        if results["SEG"]:
            _check_sent_result(results, files)
            continue
        # withheld: a verdict with QC reasons, no SEG, and a text SR without any volume that says why
        assert job["verdict"] == WITHHELD and job["outcome"] == "no_result", job
        qc_reasons = [r for r in job["reasons"] if r.startswith("QC ")]
        assert qc_reasons, job["reasons"]
        assert results["SEG"] == [] and len(results["SR"]) == 1
        text_sr = pydicom.dcmread(results["SR"][0])
        assert sr_volumes(text_sr) == []
        texts = sr_texts(text_sr)
        assert texts[0] == f"No renal volumetry: {WITHHELD}."
        assert set(qc_reasons) <= set(texts)
        assert dciodvfy(results["SR"][0]) == []
