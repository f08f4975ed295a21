"""Real pixels through the node (storescu in, Orthanc out, dciodvfy on every result): the shipped model and localizer.

- ``real_ct``: non-contrast, 3 mm (its header here claims arterial; the image check finds no enhancement). Reference
  masks made by a model (TotalSegmentator v1): right 188.8 ml, left 138.9 ml.
- ``real_ct2/s0009``: non-contrast, 1.5 mm, masks corrected by people: right 99.9 ml, left 106.1 ml; both kidneys
  touch the crop's edge on a few slices (faces of 6 % and 1 % of their largest cross-sections: lower bounds).
- ``real_ct/example_ct_dicom``: a real series with no kidney in view; its empty Study/Series/SOP Instance UIDs are
  filled in here, as a PACS would hold them, so the node can receive it.
- Two variants of s0009: its left kidney replaced by fat, and its field of view cut through the left kidney's middle
  (origin shifted by (250, -180, 400) mm): the right kidney must be delivered within 10 % and the left one named
  absent in the SR with its reason, with no total or split function.

s0009 must give both kidneys on the right sides, parenchyma Dice >= 0.90 and volume within 10 %, less than 20 ml
predicted elsewhere, and a parenchyma result in the PACS; cortex and medulla are not sent (no arterial phase), and
the SR says why. ``real_ct`` is measured within 10 % on both sides too; the shipped localizer takes a region at the
hip for a kidney there, which the job record says was left out as bone, but the model still predicts about 50 ml of
"kidney" elsewhere, so QC withholds it: pinned here as it is, until a model does better. The kidney-free series gets
"no kidney found" and no volume.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from dicomnode.node.pipeline import PARENCHYMA_ONLY, WITHHELD
from tests.peers import REAL_CT, SHARED, NodeFactory, Orthanc, dciodvfy, storescu, tools_missing, wait_for
from tests.readback import dice, seg_masks, sr_groups, sr_texts, sr_volumes
from training.variants import cut_through, without_kidney
from training.volume_dicom import SeriesTags, write_volume_series

S0009 = SHARED / "data" / "real_ct2" / "s0009"

pytestmark = [
    pytest.mark.skipif(bool(tools_missing()), reason=f"missing tools: {tools_missing()}"),
    pytest.mark.skipif(not REAL_CT.exists() or not S0009.exists(), reason="shared real CTs not present"),
    pytest.mark.slow,
]

#: case -> (CT volume, reference mask per side)
KIDNEY_CASES = {
    "real_ct": (REAL_CT / "example_ct.nii.gz", {side: REAL_CT / "example_ct_labels" / f"kidney_{side}.nii.gz" for side in ("left", "right")}),
    "s0009": (S0009 / "ct.nii.gz", {side: S0009 / f"kidney_{side}.nii.gz" for side in ("left", "right")}),
}
MAX_VOLUME_ERROR, MIN_DICE, MAX_STRAY_ML = 0.10, 0.90, 20.0


def _mask(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0


def _kidney_free_series(folder: Path) -> list[Path]:
    """The real kidney-free slices, with the UIDs their data sets lack taken from the file meta or made up."""
    folder.mkdir(parents=True)
    study, series, files = generate_uid(), generate_uid(), []
    for path in sorted((REAL_CT / "example_ct_dicom").iterdir()):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID, ds.SOPClassUID = ds.file_meta.MediaStorageSOPInstanceUID, ds.file_meta.MediaStorageSOPClassUID
        files.append(folder / path.name)
        ds.save_as(files[-1])
    return files


def _results(orthanc: Orthanc, study_uid: str, folder: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {"SEG": [], "SR": []}
    for modality in found:
        for instance in orthanc.instances_of_modality(modality):
            path = orthanc.download(instance, folder / f"{modality}_{instance}.dcm")
            if pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID == study_uid:
                found[modality].append(path)
    return found


def test_real_ct_gives_parenchyma_on_the_right_sides_and_nothing_where_no_kidney_is(tmp_path: Path, node_process: NodeFactory, orthanc: Orthanc) -> None:
    studies = {name: write_volume_series(sitk.ReadImage(str(image)), tmp_path / name, SeriesTags(study_seed=name)) for name, (image, _) in KIDNEY_CASES.items()}
    studies["no kidney"] = _kidney_free_series(tmp_path / "no_kidney")
    s0009, left = sitk.ReadImage(str(S0009 / "ct.nii.gz")), _mask(S0009 / "kidney_left.nii.gz")
    studies["s0009 without left"] = write_volume_series(without_kidney(s0009, left), tmp_path / "no_left", SeriesTags(study_seed="no left"))
    cut, _ = cut_through(s0009, left, {})
    studies["s0009 cut left"] = write_volume_series(cut, tmp_path / "cut", SeriesTags(study_seed="cut"), shift_mm=(250.0, -180.0, 400.0))
    uids = {pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID: name for name, files in studies.items()}
    orthanc.start()
    node = node_process(
        tmp_path / "node",
        [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}],
        extra={"send_text_sr_without_result": True},
    )
    node.start()
    for name, files in studies.items():
        sent = storescu(node.port, node.ae_title, files, extra=("-xv",) if name == "no kidney" else ())  # as stored: JPEG 2000 lossless
        assert sent.returncode == 0, sent.stderr
    wait_for(lambda: len(node.jobs()) == len(studies) and all(j["state"] == "done" for j in node.jobs()), 900, 2.0, "every job to end")
    wait_for(lambda: all(j["delivery"] != "sending" for j in node.status()), 120, 1.0, "deliveries")
    jobs = {uids[job["study_uid"]]: job for job in node.status()}
    for name in KIDNEY_CASES:  # the model-free checks do not fire on the shipped model's real-CT kidneys
        assert not any(rule in r for r in jobs[name]["reasons"] for rule in ("part of the kidney is left out", "cortex thicker")), jobs[name]["reasons"]

    withheld = jobs["real_ct"]
    assert withheld["outcome"] == "no_result" and withheld["verdict"] == WITHHELD
    assert any("left out as bone" in r for r in withheld["reasons"]), withheld["reasons"]
    assert any("predicted as kidney outside the kidneys kept" in r for r in withheld["reasons"]), withheld["reasons"]
    for side, reference_ml in (("left", 138.9), ("right", 188.8)):
        assert withheld["measurements"][f"parenchyma_{side}_ml"] == pytest.approx(reference_ml, rel=MAX_VOLUME_ERROR), side
    assert _results(orthanc, withheld["study_uid"], tmp_path)["SEG"] == []

    for name, (_, references) in KIDNEY_CASES.items():
        if name == "real_ct":
            continue
        job = jobs[name]
        assert job["outcome"] == "result" and job["verdict"].endswith(PARENCHYMA_ONLY), (name, job)
        figures = job["measurements"]
        stray = figures["predicted_ml"] - figures["total_parenchyma_ml"]
        assert stray < MAX_STRAY_ML and figures["sent"] == ["parenchyma"], (name, figures)
        results = _results(orthanc, job["study_uid"], tmp_path)
        assert len(results["SEG"]) == 1 and len(results["SR"]) == 1, name
        seg_path, sr_path = results["SEG"][0], results["SR"][0]
        assert dciodvfy(seg_path) == [] and dciodvfy(sr_path) == []
        seg = pydicom.dcmread(seg_path)
        source = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in studies[name]]
        masks = seg_masks(seg_path, source)
        labels = {int(s.SegmentNumber): s.SegmentLabel.lower() for s in seg.SegmentSequence}
        assert set(labels.values()) == {"left renal parenchyma", "right renal parenchyma"}, name
        sr = pydicom.dcmread(sr_path)
        volumes = {g.identifier: g.volume_ml for g in sr_groups(sr) if g.segment_number}
        for side, path in references.items():
            reference = _mask(path)
            reference_ml = reference.sum() * float(np.prod(sitk.ReadImage(str(path)).GetSpacing())) / 1000.0
            assert volumes[f"{side} renal parenchyma"] == pytest.approx(reference_ml, rel=MAX_VOLUME_ERROR), (name, side)
            number = next(n for n, label in labels.items() if label == f"{side} renal parenchyma")
            assert dice(masks[number], reference) >= MIN_DICE, (name, side, dice(masks[number], reference))
        for side in ("Left", "Right"):
            assert any(text.startswith(f"{side} renal cortex and medulla not reported: not measured") for text in sr_texts(sr)), name

    # one kidney replaced by fat, and the field of view cut through the left kidney (origin shifted): the right kidney
    # is delivered within 10 %, the left one is named absent with its reason, and no total or split function is given
    for name, why in (("s0009 without left", "no kidney was found on this side"), ("s0009 cut left", "cut off by the field of view")):
        job = jobs[name]
        assert job["outcome"] == "result" and f"left kidney not reported ({why})" in job["verdict"], (name, job)
        figures = job["measurements"]
        assert figures["left_split"] is None and figures["total_parenchyma_ml"] is None and figures["delivered"] == ["right parenchyma"], figures
        results = _results(orthanc, job["study_uid"], tmp_path)
        assert len(results["SEG"]) == 1 and len(results["SR"]) == 1, name
        assert dciodvfy(results["SEG"][0]) == [] and dciodvfy(results["SR"][0]) == []
        assert {s.SegmentLabel.lower() for s in pydicom.dcmread(results["SEG"][0]).SegmentSequence} == {"right renal parenchyma"}
        sr = pydicom.dcmread(results["SR"][0])
        volumes = {g.identifier: g.volume_ml for g in sr_groups(sr) if g.segment_number}
        assert volumes == {"right renal parenchyma": pytest.approx(99.9, rel=MAX_VOLUME_ERROR)}, (name, volumes)
        assert any(text.startswith(f"Left kidney not reported: {why}") for text in sr_texts(sr)), (name, sr_texts(sr))

    kidney_free = jobs["no kidney"]
    assert kidney_free["outcome"] == "no_result" and kidney_free["verdict"] == "no kidney found in the series", kidney_free
    results = _results(orthanc, kidney_free["study_uid"], tmp_path)
    assert results["SEG"] == [] and len(results["SR"]) == 1
    text_sr = pydicom.dcmread(results["SR"][0])
    assert sr_volumes(text_sr) == [] and sr_texts(text_sr)[0] == "No renal volumetry: no kidney found in the series."
    # the real series' patient and study IDs are blank and its procedure code is Sectra's private scheme; the text
    # SR carries them as they came: no other warning, no error
    problems = [p for p in dciodvfy(results["SR"][0]) if "DICOMDIR" not in p and "<SECTRA>" not in p]
    assert problems == []
