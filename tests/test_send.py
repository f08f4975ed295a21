"""The send stage in process against a real Orthanc, by C-STORE and by STOW-RS to its DICOMweb plugin: delivered
files mark the job delivered; a PACS that is down gets retries with backoff, then the file is parked until ``retry``;
a destination no longer configured or a result file that cannot be read parks at once with the reason; STOW-RS
credentials come from the environment only."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest

from dicomnode.config import Delivery, DimseDestination, NodeConfig, StowRsDestination, load_config
from dicomnode.options import Auth
from dicomnode.outbound.retry import backoff
from dicomnode.outbound.send import send_due
from dicomnode.store import Queued, Store
from dicomnode.store.states import DeliveryState, JobDelivery, Outcome
from tests.peers import Orthanc, tools_missing
from training.phantom_dicom import write_study
from training.phantoms import Grid, Phase

pytestmark = pytest.mark.skipif(bool(tools_missing()), reason=f"missing tools: {tools_missing()}")


@pytest.fixture
def queued(tmp_path: Path) -> tuple[Store, list[Path], int]:
    """A store with a finished job whose two files are queued for the destination "pacs"."""
    study = write_study(5, tmp_path / "study", phases=(Phase.ARTERIAL,), grid=Grid.centred(32, 10.0, 2, 5.0))
    files = study.series[0].files
    store = Store(tmp_path / "node.sqlite")
    job = store.create_job(study.study_uid, 2)
    store.start_job(job.id)
    results = [(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID), f) for f in files]
    store.finish_job(job.id, Outcome.RESULT, [Queued("pacs", uid, path) for uid, path in results], verdict="ok", reasons=[])
    return store, files, job.id


def _config(orthanc: Orthanc, **delivery: float) -> NodeConfig:
    pacs = DimseDestination("pacs", orthanc.aet, "127.0.0.1", orthanc.dicom_port)
    return NodeConfig(destinations=(pacs,), delivery=replace(Delivery(timeout_s=5), **delivery))


def test_delivered_files_mark_the_job_delivered(queued: tuple[Store, list[Path], int], orthanc: Orthanc) -> None:
    store, files, job_id = queued
    orthanc.start()
    assert send_due(_config(orthanc), store) == 2
    assert store.job(job_id).delivery is JobDelivery.DELIVERED
    assert all(d.state is DeliveryState.SENT and d.attempts == 1 for d in store.deliveries(job_id))
    assert len(orthanc.instances_of_modality("CT")) == 2
    assert send_due(_config(orthanc), store) == 0  # nothing sent twice


def test_a_pacs_that_is_down_gets_retries_with_backoff_then_the_files_are_parked(queued: tuple[Store, list[Path], int], orthanc: Orthanc) -> None:
    store, _, job_id = queued
    config = _config(orthanc, max_attempts=2, backoff_s=30.0)
    now = time.time() + 1  # after the queueing
    assert send_due(config, store, now) == 0
    first = store.deliveries(job_id)
    assert all(d.state is DeliveryState.QUEUED and d.attempts == 1 and d.next_attempt_at == now + backoff(config.delivery, 1) for d in first)
    assert "no association" in (first[0].last_error or "")
    assert send_due(config, store, now + 29) == 0 and store.deliveries(job_id) == first  # not due yet: not tried
    send_due(config, store, now + 30)
    assert {d.state for d in store.deliveries(job_id)} == {DeliveryState.DEAD}
    assert store.job(job_id).delivery is JobDelivery.FAILED
    orthanc.start()
    assert send_due(config, store, now + 10**6) == 0  # parked files wait for an operator
    assert store.requeue_dead(job_id) == 2 and store.job(job_id).delivery is JobDelivery.SENDING
    assert send_due(config, store) == 2 and store.job(job_id).delivery is JobDelivery.DELIVERED


def test_a_destination_no_longer_configured_or_a_missing_file_parks_at_once(queued: tuple[Store, list[Path], int], orthanc: Orthanc) -> None:
    store, files, job_id = queued
    orthanc.start()
    send_due(NodeConfig(), store)  # "pacs" is gone from the configuration
    assert {(d.state, d.attempts) for d in store.deliveries(job_id)} == {(DeliveryState.DEAD, 1)}
    assert all("no longer configured" in (d.last_error or "") for d in store.deliveries(job_id))
    store.requeue_dead(job_id)
    files[0].unlink()
    assert send_due(_config(orthanc), store) == 1
    states = {d.path: (d.state, d.last_error or "") for d in store.deliveries(job_id)}
    assert states[files[1]] == (DeliveryState.SENT, "")
    assert states[files[0]][0] is DeliveryState.DEAD and "unreadable" in states[files[0]][1]


def _stow(orthanc: Orthanc, **delivery: float) -> NodeConfig:
    pacs = StowRsDestination("pacs", url=orthanc.dicomweb_url, auth=Auth.BASIC, credentials_env="PACS_STOW_CREDENTIALS")
    return NodeConfig(destinations=(pacs,), delivery=replace(Delivery(timeout_s=10), **delivery))


def test_stow_rs_with_basic_auth_from_the_environment_delivers_to_orthancs_dicomweb(
    queued: tuple[Store, list[Path], int], orthanc: Orthanc, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, files, job_id = queued
    orthanc.dicomweb, orthanc.user = True, ("node", "s3cret")
    orthanc.start()
    monkeypatch.setenv("PACS_STOW_CREDENTIALS", "node:wrong")
    assert send_due(_stow(orthanc, max_attempts=3), store) == 0
    assert all("HTTP 401" in (d.last_error or "") and d.state is DeliveryState.QUEUED for d in store.deliveries(job_id))
    monkeypatch.setenv("PACS_STOW_CREDENTIALS", "node:s3cret")
    assert send_due(_stow(orthanc), store, time.time() + 3600) == 2
    assert store.job(job_id).delivery is JobDelivery.DELIVERED
    stored = {orthanc.get(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.instances_of_modality("CT")}
    assert stored == {d.sop_uid for d in store.deliveries(job_id)}


def test_stow_rs_to_a_service_that_is_down_is_retried_then_parked(queued: tuple[Store, list[Path], int], orthanc: Orthanc, monkeypatch) -> None:
    store, _, job_id = queued
    monkeypatch.setenv("PACS_STOW_CREDENTIALS", "node:s3cret")
    config = _stow(orthanc, max_attempts=2, backoff_s=1.0)
    send_due(config, store)
    assert all("no connection" in (d.last_error or "") and d.state is DeliveryState.QUEUED for d in store.deliveries(job_id))
    send_due(config, store, time.time() + 10)
    assert store.job(job_id).delivery is JobDelivery.FAILED


def test_stow_rs_credentials_never_come_from_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.yaml"
    monkeypatch.delenv("PACS_STOW_CREDENTIALS", raising=False)
    destination = "destinations:\n  - {name: web, protocol: stow-rs, url: 'https://pacs/dicom-web', auth: basic, credentials_env: PACS_STOW_CREDENTIALS}\n"
    path.write_text(destination)
    with pytest.raises(ValueError, match=r"destinations\[0\]\.credentials_env: PACS_STOW_CREDENTIALS is not set"):
        load_config(path)
    monkeypatch.setenv("PACS_STOW_CREDENTIALS", "node:s3cret")
    assert isinstance(load_config(path).destinations[0], StowRsDestination)
    path.write_text(destination.replace("credentials_env", "password"))
    with pytest.raises(ValueError, match=r"destinations\[0\]\.password: unknown setting"):
        load_config(path)
