"""Faults a node left running meets: kills mid-receive, mid-inference and mid-send, a PACS that stays down,
re-sent studies, a full disk, and callers that are not allowed. Real peers throughout."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pydicom
import pytest

from tests.peers import NodeFactory, Orthanc, dciodvfy, echoscu, storescu, tools_missing, wait_for
from training.phantom_dicom import StudyFiles, write_study
from training.phantoms import Grid, Phase

pytestmark = pytest.mark.skipif(bool(tools_missing()), reason=f"missing tools: {tools_missing()}")

#: A smaller field of view than the end-to-end test: volumes do not matter here, only what happens to the study.
FAULT_GRID = Grid.centred(160, 1.6, 24, 5.0)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> StudyFiles:
    return write_study(777, tmp_path_factory.mktemp("faults"), phases=(Phase.NONCONTRAST, Phase.ARTERIAL), grid=FAULT_GRID)


def _destination(orthanc: Orthanc) -> list[dict]:
    return [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}]


def _files(study: StudyFiles) -> list[Path]:
    return [f for s in study.series for f in s.files]


def _result_counts(orthanc: Orthanc) -> tuple[int, int]:
    return len(orthanc.instances_of_modality("SEG")), len(orthanc.instances_of_modality("SR"))


def test_killed_mid_inference_resumes_and_resending_makes_no_duplicates(tmp_path: Path, study: StudyFiles, orthanc: Orthanc, node_process: NodeFactory) -> None:
    orthanc.start()
    node = node_process(tmp_path / "node", _destination(orthanc))
    node.start()
    assert storescu(node.port, node.ae_title, _files(study)).returncode == 0
    wait_for(lambda: any(j["state"] == "running" for j in node.jobs()), 120, 0.1, "the job to start")
    node.stop(signal.SIGKILL)
    node.start()
    wait_for(lambda: _result_counts(orthanc) == (1, 1), 300, 1.0, "SEG and SR after the restart")
    wait_for(lambda: [(j["version"], j["state"], j["delivery"]) for j in node.jobs()] == [(1, "done", "delivered")], 30, 0.5, "one job, done")
    assert "was interrupted; it runs again" in node.log()

    # The same study again: acknowledged, not stored twice, no new version, no new results.
    assert storescu(node.port, node.ae_title, _files(study)).returncode == 0
    time.sleep(5)  # longer than the quiet period and two ticks
    assert [(j["version"], j["state"], j["delivery"]) for j in node.jobs()] == [(1, "done", "delivered")]
    assert _result_counts(orthanc) == (1, 1)


def test_killed_mid_receive_loses_nothing(tmp_path: Path, study: StudyFiles, orthanc: Orthanc, node_process: NodeFactory) -> None:
    orthanc.start()
    node = node_process(tmp_path / "node", _destination(orthanc), extra={"quiet_period_s": 6})
    node.start()
    storage = node.folder / "storage"
    sender = subprocess.Popen(
        ["storescu", "-R", "-aec", node.ae_title, "127.0.0.1", str(node.port), *map(str, _files(study))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(lambda: len(list(storage.rglob("*.dcm"))) >= 10, 60, 0.02, "some instances stored")
    node.stop(signal.SIGKILL)
    sender.wait(timeout=60)
    stored_before = len(list(storage.rglob("*.dcm")))
    assert stored_before < len(_files(study))
    node.start()
    assert storescu(node.port, node.ae_title, _files(study)).returncode == 0
    wait_for(lambda: _result_counts(orthanc) == (1, 1), 300, 1.0, "SEG and SR after re-sending")
    assert len(list(storage.rglob("*.dcm"))) == len(_files(study))
    assert not list(storage.rglob("*.tmp"))
    wait_for(lambda: [(j["state"], j["delivery"]) for j in node.jobs()] == [("done", "delivered")], 30, 0.5, "the job to be done and delivered")


def test_pacs_down_parks_results_survives_a_kill_and_retry_sends_them_once(
    tmp_path: Path, study: StudyFiles, orthanc: Orthanc, node_process: NodeFactory
) -> None:
    node = node_process(tmp_path / "node", _destination(orthanc), extra={"delivery": {"max_attempts": 3, "backoff_s": 0.5, "max_backoff_s": 1, "timeout_s": 5}})
    node.start()
    assert storescu(node.port, node.ae_title, _files(study)).returncode == 0
    wait_for(lambda: any(j["delivery"] == "sending" for j in node.jobs()), 300, 0.2, "results waiting to be sent")
    node.stop(signal.SIGKILL)  # killed while sends are pending
    node.start()
    wait_for(lambda: [j["delivery"] for j in node.jobs()] == ["failed"], 60, 0.5, "the deliveries to be parked")
    status = node.cli("status")
    assert "delivery failed" in status.stdout and "dead" in status.stdout and "peer down" in status.stdout
    orthanc.start()
    time.sleep(3)
    assert _result_counts(orthanc) == (0, 0)  # parked deliveries wait for an operator
    retry = node.cli("retry")
    assert retry.returncode == 0 and retry.stdout.startswith("2 parked deliveries")
    wait_for(lambda: _result_counts(orthanc) == (1, 1), 60, 0.5, "SEG and SR after retry")
    wait_for(lambda: [(j["state"], j["delivery"]) for j in node.jobs()] == [("done", "delivered")], 30, 0.5, "the job to be done and delivered")


@pytest.mark.parametrize("job", ["7", "99999999999999999999"])
def test_retry_of_an_unknown_job_names_it_in_one_line_and_fails(tmp_path: Path, node_process: NodeFactory, job: str) -> None:
    node = node_process(tmp_path / "node", [])
    node.write_config()
    retry = node.cli("retry", "--job", job)
    assert (retry.returncode, retry.stdout, retry.stderr) == (2, "", f"--job: no job {job}\n")


def test_disk_nearly_full_refuses_with_out_of_resources(tmp_path: Path, study: StudyFiles, node_process: NodeFactory) -> None:
    node = node_process(tmp_path / "node", [], extra={"min_free_disk_mb": 10**9, "retention": {"free_disk_mb": 10**9 + 1}})
    node.start()
    sent = storescu(node.port, node.ae_title, study.series[0].files[:2], extra=("-v",))
    assert "outofresources" in (sent.stdout + sent.stderr).lower().replace(" ", ""), sent.stdout + sent.stderr
    assert not list((node.folder / "storage").rglob("*.dcm"))
    assert "disk nearly full" in node.cli("status").stdout


def test_only_allowed_callers_and_addresses(tmp_path: Path, study: StudyFiles, node_process: NodeFactory) -> None:
    node = node_process(tmp_path / "by-title", [], extra={"allowed_callers": ["GOODSCU"]})
    node.start()
    assert not echoscu(node.port, node.ae_title, calling="BADSCU")
    assert storescu(node.port, node.ae_title, study.series[0].files[:2], calling="BADSCU").returncode != 0
    assert echoscu(node.port, node.ae_title, calling="GOODSCU")
    assert storescu(node.port, node.ae_title, study.series[0].files[:2], calling="GOODSCU").returncode == 0
    node = node_process(tmp_path / "by-address", [], extra={"allowed_addresses": ["127.0.0.2"]})
    node.start()
    assert not echoscu(node.port, node.ae_title)
    assert "refused a connection from 127.0.0.1" in node.log()


def test_no_arterial_series_sends_a_text_sr_when_configured(tmp_path: Path, study: StudyFiles, orthanc: Orthanc, node_process: NodeFactory) -> None:
    orthanc.start()
    # with the parenchyma fallback off (on by default, it would measure the parenchyma of the native series)
    extra = {"send_text_sr_without_result": True, "selection": {"parenchyma_fallback": False}}
    node = node_process(tmp_path / "node", _destination(orthanc), extra=extra)
    node.start()
    assert storescu(node.port, node.ae_title, study.by_phase(Phase.NONCONTRAST).files).returncode == 0
    wait_for(lambda: _result_counts(orthanc) == (0, 1), 120, 0.5, "a text SR in Orthanc")
    wait_for(lambda: [(j["state"], j["verdict"]) for j in node.jobs()] == [("done", "no arterial series")], 30, 0.5, "the job to be done")
    sr = pydicom.dcmread(orthanc.download(orthanc.instances_of_modality("SR")[0], tmp_path / "sr.dcm"))
    texts = [item.TextValue for item in sr.ContentSequence]
    assert texts[0] == "No renal volumetry: no arterial series."
    assert any("native" in text for text in texts[1:])
    assert dciodvfy(tmp_path / "sr.dcm") == []
    assert "no arterial series" in node.log()
