"""A reader's corrected SEG sent to the real node with dcmtk's storescu, after the node's result for the study reached
Orthanc: corrections written by highdicom and by dcmqi (3D Slicer's writer) from s0009's people-corrected masks each
give a reader-corrected SR in Orthanc with the masks' volumes, which passes dciodvfy; the model's result stays in the
PACS, the later correction replaces the earlier one (IOCM), the history and the export keep the node's and the
reader's volumes, a site case is kept; SEGs that do not fit are refused with the reason and record nothing."""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import shutil
import urllib.request
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.sr.codedict import codes

from dicomnode.config import NodeConfig
from dicomnode.intake.receive import Receiver
from dicomnode.node.corrections import CorrectionIntake
from dicomnode.outbound.commitment import Commitments
from dicomnode.renal import Side
from dicomnode.store import Store
from dicomnode.store.open_associations import OpenAssociations
from dicomnode.store.states import JobKind, Outcome
from tests.peers import NodeFactory, Orthanc, dciodvfy, storescu, tools_missing, wait_for
from tests.readback import sr_groups
from tests.reader_segs import ITKIMAGE2SEGIMAGE, S0009, dcmqi_seg, expected_volumes, highdicom_seg, s0009_series

pytestmark = [
    pytest.mark.skipif(bool(tools_missing()), reason=f"missing tools: {tools_missing()}"),
    pytest.mark.skipif(not S0009.exists(), reason="shared real CT s0009 not present"),
    pytest.mark.skipif(not ITKIMAGE2SEGIMAGE.exists(), reason="dcmqi not installed"),
]

CORRECTED = "Renal volumes (reader-corrected)"


def _jobs_done(node, count: int) -> list[dict] | None:
    jobs = node.jobs()
    return jobs if len(jobs) == count and all(j["state"] == "done" and j["delivery"] in ("delivered", "none") for j in jobs) else None


def _corrected_srs(orthanc: Orthanc, folder: Path) -> list[pydicom.Dataset]:
    found = []
    for n, instance in enumerate(orthanc.instances_of_modality("SR")):
        ds = pydicom.dcmread(orthanc.download(instance, folder / f"sr{n}.dcm"))
        if ds.SeriesDescription == CORRECTED:
            found.append(ds)
    return found


def test_a_readers_seg_from_highdicom_or_dcmqi_gives_a_reader_corrected_sr_in_orthanc(tmp_path: Path, node_process: NodeFactory, orthanc: Orthanc) -> None:
    orthanc.start()
    series, files, masks = s0009_series(tmp_path / "s0009")
    node = node_process(tmp_path / "node", [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}])
    node.start()
    assert storescu(node.port, node.ae_title, files).returncode == 0
    wait_for(lambda: _jobs_done(node, 1), 300, 1.0, "the model's result delivered")
    [model_job] = node.jobs()
    assert model_job["outcome"] == "result", model_job
    model_srs, model_segs = orthanc.instances_of_modality("SR"), orthanc.instances_of_modality("SEG")
    assert len(model_srs) == 1 and len(model_segs) == 1
    # the node's own SEG and SR, routed back by the PACS: acknowledged, not stored, no new run, no correction
    echoed = [orthanc.download(model_segs[0], tmp_path / "own-seg.dcm"), orthanc.download(model_srs[0], tmp_path / "own-sr.dcm")]
    assert storescu(node.port, node.ae_title, echoed, calling="PACS").returncode == 0
    wait_for(lambda: "the node's own result, sent back" in node.log(), 30, 0.5, "the echo acknowledged")

    expected = {f"{side} renal parenchyma": ml for (_, side), ml in expected_volumes(series, masks).items()}
    readers = {}
    for n, seg in enumerate([highdicom_seg(series, masks), dcmqi_seg(tmp_path / "s0009", masks, tmp_path)], 1):
        path = tmp_path / f"reader{n}.dcm"
        seg.save_as(path, enforce_file_format=True)
        sent = storescu(node.port, node.ae_title, [path], calling="VIEWER")
        assert sent.returncode == 0 and "C000" not in sent.stdout + sent.stderr, sent.stderr
        wait_for(lambda n=n: _jobs_done(node, 1 + n), 120, 0.5, f"correction {n} delivered")
        readers[str(seg.SOPInstanceUID)] = str(seg.ContentCreatorName)
    jobs = node.jobs()
    assert [(j["kind"], j["outcome"]) for j in jobs] == [("model", "result"), ("correction", "result"), ("correction", "result")]
    assert [j["verdict"] for j in jobs[1:]] == ["reader-corrected by Reader^Renal", "reader-corrected by Reader^Slicer"]

    # each correction's SR in Orthanc: the masks' volumes, referencing the reader's SEG, naming the reader, valid
    corrected = _corrected_srs(orthanc, tmp_path)
    assert len(corrected) == 2
    for sr in corrected:
        groups = [g for g in sr_groups(sr) if g.segment_number]
        assert {g.identifier: g.volume_ml for g in groups} == pytest.approx(expected, abs=0.1)
        [seg_uid] = {g.seg_uid for g in groups}
        path = tmp_path / f"corrected-{sr.SOPInstanceUID}.dcm"
        sr.save_as(path, enforce_file_format=True)
        assert dciodvfy(path) == []
        people = hd.sr.srread(path).content.get_observer_contexts(observer_type=codes.DCM.Person)
        assert [str(p.observer_identifying_attributes[0].value) for p in people] == [readers[seg_uid]]
    # the model's SR stays; the first correction is replaced by the second: one rejection note (KOS) names its SR
    assert set(model_srs) <= set(orthanc.instances_of_modality("SR"))
    notes = orthanc.instances_of_modality("KO")
    assert len(notes) == 1
    note = pydicom.dcmread(orthanc.download(notes[0], tmp_path / "note.dcm"))
    rejected = {
        i.ReferencedSOPInstanceUID for s in note.CurrentRequestedProcedureEvidenceSequence for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence
    }
    first = next(sr for sr in corrected if readers[sr_groups(sr)[0].seg_uid] == "Reader^Renal")
    assert rejected == {first.SOPInstanceUID, sr_groups(first)[0].seg_uid}  # its SR, and the reader's SEG sent with it
    assert {pydicom.dcmread(orthanc.download(i, tmp_path / "seg.dcm")).SOPInstanceUID for i in orthanc.instances_of_modality("SEG")} >= set(readers)

    # the history and the export keep both: the node's row and the reader's (the latest correction)
    exported = node.cli("export", "--format", "csv")
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert sorted(r["source"] for r in rows) == ["node", "reader"]
    reader_row = next(r for r in rows if r["source"] == "reader")
    assert float(reader_row["parenchyma_left_ml"]) == pytest.approx(expected["left renal parenchyma"], abs=0.1)
    assert float(reader_row["parenchyma_right_ml"]) == pytest.approx(expected["right renal parenchyma"], abs=0.1)
    assert reader_row["verdict"] == "reader-corrected by Reader^Slicer"
    with urllib.request.urlopen(f"http://127.0.0.1:{node.web_port}/history/{jobs[-1]['id']}", timeout=10) as response:
        page = response.read().decode()
    assert page.count("<tr class='this'>") == 2 and "reader-corrected by Reader^Slicer" in page and "renal-synth3-cpu" in page

    # each correction kept as a site case, its identifiers left out (no pseudonym key set)
    cases = sorted((tmp_path / "node" / "var" / "site_cases").glob("*.json"))
    assert len(cases) == 2
    case = json.loads(cases[-1].read_text())
    assert case["reader"] == "Reader^Slicer" and case["cortex_labelled"] is False and "left_out" in case["identifiers"]
    assert case["volumes_ml"]["reader"]["parenchyma_left"] == pytest.approx(expected["left renal parenchyma"], abs=0.1)
    assert set(case["change_ml"]) == {"parenchyma_left", "parenchyma_right"}
    name = cases[-1].name.removesuffix(".json")
    left = sitk.GetArrayFromImage(sitk.ReadImage(str(cases[-1].with_name(f"{name}_left_parenchyma.nii.gz")))) > 0
    assert np.array_equal(left, masks[Side.LEFT])


def test_a_seg_that_does_not_fit_is_refused_with_the_reason_and_records_nothing(tmp_path: Path, node_process: NodeFactory) -> None:
    series, files, masks = s0009_series(tmp_path / "s0009")
    node = node_process(tmp_path / "node", [])
    node.start()
    assert storescu(node.port, node.ae_title, files).returncode == 0
    wait_for(lambda: _jobs_done(node, 1), 300, 1.0, "the model's result")
    good = highdicom_seg(series, masks)

    def changed(**values: object) -> pydicom.Dataset:
        seg = copy.deepcopy(good)
        for keyword, value in values.items():
            setattr(seg, keyword, value)
        seg.SOPInstanceUID = hd.UID()
        return seg

    shifted = changed()
    position = shifted.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    position.ImagePositionPatient = [float(v) + (0.75 if axis == 2 else 0.0) for axis, v in enumerate(position.ImagePositionPatient)]
    liver = highdicom_seg(series, masks, kind=codes.SCT.Liver)
    broken = changed()
    del broken.SegmentSequence
    cases = {
        "another patient": changed(PatientID="SOMEONE-ELSE"),
        "another frame of reference": changed(FrameOfReferenceUID=hd.UID()),
        "its frames do not lie on the measured series' slices": shifted,
        "segments that are not a renal structure with a side": liver,
        "a data set that cannot be read as a SEG": broken,
    }
    for n, (reason, seg) in enumerate(cases.items()):
        path = tmp_path / f"bad{n}.dcm"
        seg.save_as(path, enforce_file_format=True)
        sent = storescu(node.port, node.ae_title, [path], calling="VIEWER", extra=("-v",))
        assert "Error: CannotUnderstand" in sent.stdout + sent.stderr, (reason, sent.stdout, sent.stderr)
    report = node.report()
    refusals = [r["reason"] for r in report["refusals"]]
    assert len(refusals) == len(cases)
    for reason, recorded in zip(cases, refusals, strict=True):
        assert recorded.startswith("not taken as a correction of job 1: " + reason), recorded
    assert [j["kind"] for j in node.jobs()] == ["model"]  # no correction job, and no model run started by them
    assert not list((tmp_path / "node").glob("var/site_cases/*.json"))
    stored = [p for p in (tmp_path / "node" / "storage").rglob("*.dcm") if pydicom.dcmread(p, stop_before_pixels=True).Modality == "SEG"]
    assert stored == []


def test_a_correction_seg_the_index_lost_is_taken_again_at_start_and_starts_no_model_run(tmp_path: Path) -> None:
    """A power cut after the SEG was acknowledged can lose the embedded index's last commit, never the file: at start,
    the receiver takes the SEG as the correction it was, not as an instance that would start a new model run."""
    series, files, masks = s0009_series(tmp_path / "s0009")
    config = dataclasses.replace(NodeConfig(), storage=str(tmp_path / "storage"), base_dir=tmp_path)
    store = Store(tmp_path / "node.sqlite")
    for source in files:
        ds = pydicom.dcmread(source, stop_before_pixels=True)
        path = tmp_path / "storage" / ds.StudyInstanceUID / ds.SeriesInstanceUID / source.name
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, path)
        store.add_instance(ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPClassUID, path, "CT")
    study_uid, series_uid = str(series.datasets[0].StudyInstanceUID), str(series.datasets[0].SeriesInstanceUID)
    [job] = store.create_jobs([(study_uid, len(files))])
    store.start_job(job.id)
    store.finish_job(job.id, Outcome.RESULT, [], series_uid=series_uid, measurements={"left": 1})
    seg = highdicom_seg(series, masks)
    lost = tmp_path / "storage" / study_uid / str(seg.SeriesInstanceUID) / f"{seg.SOPInstanceUID}.dcm"
    lost.parent.mkdir(parents=True)
    seg.save_as(lost, enforce_file_format=True)

    Receiver(config, store, OpenAssociations(store, "test"), Commitments(config, store), CorrectionIntake(config, store))
    [correction] = store.corrections()
    assert (correction.sop_uid, correction.corrects_job, correction.reader) == (seg.SOPInstanceUID, job.id, "Reader^Renal")
    assert store.job(correction.job_id).kind is JobKind.CORRECTION
    assert store.studies_with_new_instances() == []  # no model run
    store.close()
