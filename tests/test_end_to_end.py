"""A PACS push through the node to results stored in the PACS, with Orthanc and dcmtk as real peers."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.peers import NodeFactory, Orthanc, dciodvfy, storescu, tools_missing, wait_for
from tests.readback import dice, seg_masks, sr_groups, voxel_ml
from training.phantom_dicom import StudyFiles, write_study
from training.phantoms import Grid, Phase

pytestmark = pytest.mark.skipif(bool(tools_missing()), reason=f"missing tools: {tools_missing()}")

#: The grid of the shipped model's training phantoms (5 mm slices, as in the paper).
STUDY_GRID = Grid.centred(224, 1.6, 36, 5.0)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> StudyFiles:
    return write_study(4242, tmp_path_factory.mktemp("study"), grid=STUDY_GRID)


def _pacs_destination(orthanc: Orthanc) -> list[dict]:
    return [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}]


def _results_in(orthanc: Orthanc) -> tuple[list[str], list[str]] | None:
    segs, srs = orthanc.instances_of_modality("SEG"), orthanc.instances_of_modality("SR")
    return (segs, srs) if segs and srs else None


def test_push_study_get_seg_and_sr_in_pacs(
    tmp_path: Path, study: StudyFiles, node_process: NodeFactory, orthanc: Orthanc, more_orthancs: Callable[..., Orthanc]
) -> None:
    orthanc.start()
    legacy = more_orthancs("legacy", aet="LEGACY")  # a PACS that shows pictures only
    legacy.start()
    destinations = [*_pacs_destination(orthanc), {"name": "legacy", "ae_title": "LEGACY", "host": "127.0.0.1", "port": legacy.dicom_port, "formats": ["sc"]}]
    node = node_process(tmp_path / "node", destinations)
    node.start()
    files = [f for series in study.series for f in series.files]
    sent = storescu(node.port, node.ae_title, files)
    assert sent.returncode == 0, sent.stderr
    last_sent = time.monotonic()
    segs, srs = wait_for(lambda: _results_in(orthanc), 600, 1.0, "SEG and SR in Orthanc")
    elapsed = time.monotonic() - last_sent
    print(f"\nwall time from last instance sent to SEG and SR stored in Orthanc: {elapsed:.1f} s")
    (tmp_path / "elapsed_s.txt").write_text(f"{elapsed:.1f}")
    assert len(segs) == 1 and len(srs) == 1
    pictures = wait_for(lambda: len(legacy.instances_of_modality("OT")) == 3 and legacy.instances_of_modality("OT"), 60, 1.0, "3 SC pages")
    assert legacy.instances_of_modality("SEG") == legacy.instances_of_modality("SR") == [] and orthanc.instances_of_modality("OT") == []
    assert pydicom.dcmread(legacy.download(pictures[0], tmp_path / "sc.dcm")).StudyInstanceUID == study.study_uid

    seg_path = orthanc.download(segs[0], tmp_path / "seg.dcm")
    sr_path = orthanc.download(srs[0], tmp_path / "sr.dcm")
    assert dciodvfy(seg_path) == []
    assert dciodvfy(sr_path) == []

    arterial = study.by_phase(Phase.ARTERIAL)
    seg = pydicom.dcmread(seg_path)
    assert seg.StudyInstanceUID == study.study_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == arterial.series_uid
    source_uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in arterial.files]
    masks = seg_masks(seg_path, source_uids)
    labels = {int(s.SegmentNumber): s.SegmentLabel.lower() for s in seg.SegmentSequence}

    sr = pydicom.dcmread(sr_path)
    groups = [g for g in sr_groups(sr) if g.segment_number]
    assert all(g.qc == "Usable - Meets the quality control standard" and g.findings == [] for g in groups), [(g.identifier, g.qc, g.findings) for g in groups]
    assert sr.SeriesDescription == "Renal volumes (research)" and seg.SeriesDescription == "Renal segmentation (research)"
    assert {g.identifier for g in groups} == {f"{side} renal {s}" for side in ("left", "right") for s in ("cortex", "medulla", "parenchyma")}
    truth = arterial.phantom.volumes_ml
    for group in groups:
        side, _, structure = group.identifier.split(" ")
        assert group.seg_uid == seg.SOPInstanceUID
        assert labels[group.segment_number] == f"{side} renal {structure}"
        assert group.unit == "cm3"
        mask_ml = masks[group.segment_number].sum() * voxel_ml(seg)
        assert mask_ml == pytest.approx(group.volume_ml, rel=0.01), group.identifier
        assert group.volume_ml == pytest.approx(truth[f"{structure}_{side}"], rel=0.10), group.identifier

    for side in ("left", "right"):
        number = next(n for n, label in labels.items() if label == f"{side} renal parenchyma")
        assert dice(masks[number], arterial.phantom.kidney_mask(side, "parenchyma")) > 0.85

    wait_for(lambda: [(j["state"], j["delivery"]) for j in node.jobs()] == [("done", "delivered")], 30, 0.5, "the job to be done and delivered")
    jobs = node.status()
    assert jobs[0]["series_uid"] == arterial.series_uid
    assert any("ARTERIAL" in reason for reason in jobs[0]["reasons"])

    # what monitoring sees of the running node
    with urllib.request.urlopen(f"http://127.0.0.1:{node.web_port}/healthz", timeout=10) as response:
        assert json.loads(response.read())["status"] == "ok"
    with urllib.request.urlopen(f"http://127.0.0.1:{node.web_port}/metrics", timeout=10) as response:
        families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    assert families["dicomnode_instances_received"].samples[0].value == len(files)
    done = [s for s in families["dicomnode_jobs"].samples if s.labels == {"state": "done", "outcome": "result", "delivery": "delivered"}]
    assert [s.value for s in done] == [1.0]
    assert {s.labels["stage"] for s in families["dicomnode_stage_seconds"].samples} >= {"select", "load", "segment", "measure", "write"}


def test_results_survive_a_pacs_that_is_down(tmp_path: Path, study: StudyFiles, node_process: NodeFactory, orthanc: Orthanc) -> None:
    node = node_process(tmp_path / "node", _pacs_destination(orthanc))
    orthanc.modalities = {"node": [node.ae_title, "127.0.0.1", node.port]}
    orthanc.start()
    node.start()
    arterial = study.by_phase(Phase.ARTERIAL)
    orthanc.upload(arterial.files)
    orthanc.post("/modalities/node/store", {"Resources": [orthanc.get("/studies")[0]], "Synchronous": True})
    orthanc.stop()

    def failed_tries() -> int:
        deliveries = [d for job in node.status() for d in job["deliveries"]]
        return bool(deliveries) and min(d["attempts"] for d in deliveries) >= 2 and all(d["state"] == "queued" for d in deliveries)

    wait_for(failed_tries, 600, 1.0, "the node to fail sending to the stopped PACS twice")
    assert (node.status()[0]["state"], node.status()[0]["delivery"]) == ("done", "sending")
    orthanc.start()
    segs, srs = wait_for(lambda: _results_in(orthanc), 120, 1.0, "SEG and SR after the PACS came back")
    assert len(segs) == 1 and len(srs) == 1
    wait_for(lambda: node.status()[0]["delivery"] == "delivered", 30, what="the job to be delivered")
    assert all(d["state"] == "sent" for d in node.status()[0]["deliveries"])
