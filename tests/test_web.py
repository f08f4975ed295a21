"""The node's web endpoints in process: ``/metrics`` parses with prometheus-client's own parser and counts what the
store holds; ``/healthz`` says which check fails; the status page, rendered by headless Chromium, lists the jobs
with their state, outcome, delivery, verdict and QC and shows no patient identity."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dicomnode.config import NodeConfig, WebConfig
from dicomnode.measured import HistoryEntry, Patient
from dicomnode.node.web import WebServer, history_page
from dicomnode.store import Queued, Store
from dicomnode.store.states import DeliveryState, Outcome
from tests.peers import REPO, free_port

CT = "1.2.840.10008.5.1.4.1.1.2"
#: The delivered job's row of the measurement history.
MEASURED = HistoryEntry(
    Patient("WEB-PATIENT-7"), "1.2.3", "20260110", "1.2.3.9", {("parenchyma", "left"): 151.25, ("parenchyma", "right"): 140.5},
    ("parenchyma",), (), ("parenchyma",), {"parenchyma": ("renal-model", "3")}, "arterial series found",
)  # fmt: skip
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
)  # fmt: skip


@pytest.fixture
def site(tmp_path: Path):
    """A store with three jobs (delivered with QC passed, parked after a refused send, pending) and a web server."""
    store = Store(tmp_path / "node.sqlite")
    for n in range(3):
        store.add_instance(f"1.2.3.{n}", "1.2.3", "1.2.3.9", CT, tmp_path / f"{n}.dcm", "SCANNER")
    delivered, parked = store.create_job("1.2.3", 3), store.create_job("1.2.4", 3)
    store.create_job("1.2.5", 3)
    for job, verdict in ((delivered, "arterial series found"), (parked, "arterial series found by the image check")):
        store.start_job(job.id)
        store.finish_job(
            job.id, Outcome.RESULT, [Queued("pacs", "9.9", tmp_path / f"SR{job.id}.dcm")], verdict=verdict, reasons=[],
            measurements={"qc": "QC passed"}, timings={"segment": 30.0, "write": 2.0}, measured=MEASURED if job is delivered else None,
        )  # fmt: skip
    [d1], [d2] = store.deliveries(delivered.id), store.deliveries(parked.id)
    store.update_delivery(d1.id, DeliveryState.SENT, 2, 0, None)
    store.update_delivery(d2.id, DeliveryState.DEAD, 8, 0, "C-STORE failed with status 0xA700")
    config = replace(NodeConfig(storage=str(tmp_path)), web=WebConfig(port=free_port()))
    state = {"receiving": True}
    web = WebServer(config, store, lambda: state["receiving"], lambda: True)
    web.start()
    yield f"http://127.0.0.1:{config.web.port}", state
    web.stop()
    store.close()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _raw_get(base: str, target: bytes) -> tuple[int, bytes]:
    """Status code and body of a GET of ``target`` sent as raw bytes (urllib would quote them)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(b"GET " + target + b" HTTP/1.0\r\n\r\n")
        answer = b"".join(iter(lambda: connection.recv(65536), b""))
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]) if head else 0, body


def test_metrics_parse_and_count_what_the_store_holds(site) -> None:
    base, _ = site
    status, text = _get(base + "/metrics")
    assert status == 200
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("dicomnode_instances_received_total", ())] == 3
    assert samples[("dicomnode_jobs", (("delivery", "delivered"), ("outcome", "result"), ("state", "done")))] == 1
    assert samples[("dicomnode_jobs", (("delivery", "failed"), ("outcome", "result"), ("state", "done")))] == 1
    assert samples[("dicomnode_jobs", (("delivery", "none"), ("outcome", ""), ("state", "pending")))] == 1
    assert samples[("dicomnode_queue_length", (("queue", "jobs"),))] == 1
    assert samples[("dicomnode_deliveries", (("state", "dead"),))] == 1
    assert samples[("dicomnode_delivery_failures_total", ())] == 1 + 8  # one failed try before the send, eight before parking
    assert samples[("dicomnode_stage_seconds_sum", (("stage", "segment"),))] == 60.0
    assert samples[("dicomnode_stage_seconds_count", (("stage", "segment"),))] == 2


def test_healthz_names_the_failing_check(site) -> None:
    base, state = site
    status, body = _get(base + "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    state["receiving"] = False
    status, body = _get(base + "/healthz")
    assert status == 503 and json.loads(body)["checks"]["receiver"] == "not listening"
    assert _get(base + "/nothing")[0] == 404


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_status_page_in_headless_chromium_lists_the_jobs(site, tmp_path: Path) -> None:
    base, _ = site
    profile = ("--user-data-dir=" + str(tmp_path / "profile"),)
    dom = subprocess.run(["chromium", *CHROMIUM_FLAGS, *profile, "--dump-dom", base + "/"], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    rows = [row for row in dom.stdout.split("<tr class=")[1:]]
    assert len(rows) == 3 and "Health: ok" in dom.stdout
    assert "1.2.5" in rows[0] and "pending" in rows[0]  # newest first
    assert "by the image check" in rows[1] and "failed (0/1 sent)" in rows[1] and "0xA700" in rows[1]
    assert "delivered (1/1 sent)" in rows[2] and "QC passed" in rows[2] and "32.0 s" in rows[2]
    shot = tmp_path / "status.png"
    taken = subprocess.run(
        ["chromium", *CHROMIUM_FLAGS, *profile, f"--screenshot={shot}", "--window-size=1280,520", base + "/"], capture_output=True, timeout=120
    )
    assert taken.returncode == 0 and shot.stat().st_size > 10_000
    if os.environ.get("DICOMNODE_UPDATE_DOCS"):  # refreshes the README's picture
        shutil.copy(shot, REPO / "docs" / "status-page.png")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_a_job_links_to_its_patients_history_which_names_the_patient_only_when_allowed(site, tmp_path: Path) -> None:
    base, _ = site
    profile = ("--user-data-dir=" + str(tmp_path / "profile"),)
    status = subprocess.run(["chromium", *CHROMIUM_FLAGS, *profile, "--dump-dom", base + "/"], capture_output=True, text=True, timeout=120).stdout
    links = [row.split('href="')[1].split('"')[0] for row in status.split("<tr class=")[1:] if "href=" in row]
    assert links == ["/history/1"]  # the delivered job; the others measured nothing
    page = subprocess.run(["chromium", *CHROMIUM_FLAGS, *profile, "--dump-dom", base + links[0]], capture_output=True, text=True, timeout=120).stdout
    assert "20260110" in page and "151.2" in page and "140.5" in page and "renal-model 3" in page
    assert "WEB-PATIENT-7" not in page and "identifiers hidden" in page  # log_patient_data is off
    assert "Patient ID WEB-PATIENT-7" in history_page(MEASURED, [MEASURED], identified=True)
    assert _get(base + "/history/2")[0] == 404 and _get(base + "/history/99")[0] == 404


@pytest.mark.parametrize(
    "target, code, body",
    [
        (b"/history/99999999999999999999", 404, b"no measurement history for this job\n"),  # beyond 64 bits
        (b"/history/9223372036854775808", 404, b"no measurement history for this job\n"),  # 2**63
        (b"/history/" + b"9" * 5000, 404, b"no measurement history for this job\n"),  # more digits than int() takes
        (b"/history/%C2%B2", 400, b"job id: expected digits 0-9\n"),  # "²": str.isdigit() takes it, int() does not
        (b"/history/\xb2", 400, b"job id: expected digits 0-9\n"),  # the same as a raw Latin-1 byte
        (b"/history/-1", 400, b"job id: expected digits 0-9\n"),
    ],
)
def test_a_history_id_beyond_any_job_is_not_found_and_a_malformed_one_is_refused_without_a_traceback(
    site, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, target: bytes, code: int, body: bytes
) -> None:
    base, _ = site
    with caplog.at_level(logging.DEBUG, logger="dicomnode"):
        assert _raw_get(base, target) == (code, body)
        assert _get(base + "/history/1")[0] == 200  # the server still answers
    assert "Traceback" not in capfd.readouterr().err
    assert not [record for record in caplog.records if record.exc_info or record.levelno >= logging.ERROR]
