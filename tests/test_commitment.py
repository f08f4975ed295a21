"""Storage Commitment Push Model, the node as SCP: a scanner (here Orthanc, and pynetdicom) that pushed a study asks
the node to commit it before deleting its own copy. What the node holds is committed, what it does not hold is a
failure with a reason, and the report reaches the requester on the request's association or on a new one."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, StorageCommitmentPushModel

from dicomnode.config import Peer
from tests.peers import NodeFactory, Orthanc, free_port, receiver_in_process, storescu, tools_missing, wait_for
from training.phantom_dicom import write_study
from training.phantoms import Grid, Phase

WELL_KNOWN = "1.2.840.10008.1.20.1.1"


@pytest.fixture(scope="module")
def slices(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_study(84, tmp_path_factory.mktemp("s"), phases=(Phase.ARTERIAL,), grid=Grid.centred(32, 8.0, 3, 5.0)).series[0].files


def _request(uids: list[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = generate_uid()
    ds.ReferencedSOPSequence = []
    for sop_class, sop_uid in uids:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_uid
        ds.ReferencedSOPSequence.append(item)
    return ds


def test_pynetdicom_gets_the_report_on_its_own_association(tmp_path: Path, slices: list[Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dicomnode")
    with receiver_in_process(tmp_path) as (config, store):
        assert storescu(config.port, config.ae_title, slices).returncode == 0
        held = [(CTImageStorage, str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)) for p in slices]
        unknown = (CTImageStorage, generate_uid())
        reports: list[tuple[int, Dataset]] = []
        got = threading.Event()

        def on_report(event) -> tuple[int, None]:
            reports.append((event.request.EventTypeID, event.event_information))
            got.set()
            return 0x0000, None

        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", config.port, ae_title=config.ae_title, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
        assert assoc.is_established
        try:
            request = _request([*held, unknown])
            status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, WELL_KNOWN)
            assert status.Status == 0x0000
            assert got.wait(10)
            time.sleep(0.5)  # the handler has returned and pynetdicom has answered the report before the release
        finally:
            assoc.release()
        assert "acknowledged" in caplog.text  # the report went on this association, no second one was tried
        [(event_type, report)] = reports
        assert event_type == 2 and report.TransactionUID == request.TransactionUID  # failures exist
        assert [i.ReferencedSOPInstanceUID for i in report.ReferencedSOPSequence] == [uid for _, uid in held]
        [failed] = report.FailedSOPSequence
        assert failed.ReferencedSOPInstanceUID == unknown[1] and failed.FailureReason == 0x0112  # no such object instance


def test_a_request_without_its_transaction_uid_is_answered_with_a_failure(tmp_path: Path) -> None:
    with receiver_in_process(tmp_path) as (config, _):
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", config.port, ae_title=config.ae_title)
        try:
            request = _request([(CTImageStorage, generate_uid())])
            del request.TransactionUID
            status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, WELL_KNOWN)
            assert status.Status == 0x0110
        finally:
            assoc.release()


@pytest.mark.skipif(bool(tools_missing()), reason=f"missing tools: {tools_missing()}")
def test_orthanc_asks_the_node_to_commit_a_study_it_pushed_and_reads_the_report(tmp_path: Path, slices: list[Path]) -> None:
    """Orthanc, as a scanner would, stores a study to the node, asks for storage commitment and releases; the node
    reports on a new association to Orthanc's address from commitment_peers: success for the study, and failure for
    an instance it never received."""
    orthanc = Orthanc(tmp_path / "orthanc")
    with receiver_in_process(tmp_path / "node", commitment_peers=(Peer(orthanc.aet, "127.0.0.1", orthanc.dicom_port),)) as (config, store):
        orthanc.modalities = {"node": [config.ae_title, "127.0.0.1", config.port]}
        orthanc.start()
        try:
            orthanc.upload(slices)
            ids = orthanc.get("/instances")
            orthanc.post("/modalities/node/store", {"Resources": ids, "Synchronous": True})
            ok = orthanc.post("/modalities/node/storage-commitment", {"Resources": ids, "Timeout": 30})
            report = wait_for(lambda: _finished(orthanc, ok["ID"]), 60, 0.5, "Orthanc to receive the report")
            assert report["Status"] == "Success" and len(report["Success"]) == len(slices) and report["Failures"] == []
            missing = {"SOPClassUID": CTImageStorage, "SOPInstanceUID": generate_uid()}
            bad = orthanc.post("/modalities/node/storage-commitment", {"DicomInstances": [missing], "Timeout": 30})
            report = wait_for(lambda: _finished(orthanc, bad["ID"]), 60, 0.5, "Orthanc to receive the second report")
            assert report["Status"] == "Failure" and report["Failures"][0]["SOPInstanceUID"] == missing["SOPInstanceUID"]
        finally:
            orthanc.stop()


def _finished(orthanc: Orthanc, transaction: str) -> dict | None:
    report = orthanc.get(f"/storage-commitment/{transaction}")
    return report if report.get("Status") != "Pending" else None


@pytest.mark.skipif(bool(tools_missing()), reason=f"missing tools: {tools_missing()}")
@pytest.mark.parametrize("pacs_reaches_the_node", [True, False])
def test_results_are_delivered_only_when_the_pacs_commits_them(
    tmp_path: Path, node_process: NodeFactory, orthanc: Orthanc, slices: list[Path], pacs_reaches_the_node: bool
) -> None:
    """A destination with storage_commitment: after C-STORE the node asks Orthanc to commit the SEG and SR, and the
    job is delivered only when Orthanc's report (on a new association to the node) says so. An Orthanc that has the
    node's address wrong (an Orthanc that does not know the node at all refuses the request: sent again) leaves them
    committing, and after delivery.commitment_timeout_s they are sent again."""
    study = write_study(85, tmp_path / "study", phases=(Phase.ARTERIAL,), grid=Grid.centred(96, 3.5, 24, 5.0))
    pacs = [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port, "storage_commitment": True}]
    node = node_process(
        tmp_path / "node", pacs, model_name="renal-phantom-cpu", extra={"delivery": {"commitment_timeout_s": 4, "max_attempts": 50, "backoff_s": 1}}
    )
    orthanc.modalities = {"node": [node.ae_title, "127.0.0.1", node.port if pacs_reaches_the_node else free_port()]}
    orthanc.start()
    node.start()
    assert storescu(node.port, node.ae_title, study.series[0].files).returncode == 0
    wait_for(lambda: orthanc.instances_of_modality("SR"), 180, 0.5, "results in Orthanc")
    if pacs_reaches_the_node:
        wait_for(lambda: node.status()[0]["delivery"] == "delivered", 60, 0.5, "the job delivered once committed")
        assert "committed" in node.log() and {d["state"] for d in node.status()[0]["deliveries"]} == {"sent"}
    else:
        time.sleep(2)
        job = node.status()[0]
        assert job["delivery"] == "sending" and {d["state"] for d in job["deliveries"]} == {"committing"}
        wait_for(lambda: any("commitment" in (d["last_error"] or "") for d in node.status()[0]["deliveries"]), 30, 0.5, "a resend")


def test_a_request_while_the_database_is_down_is_answered_ask_again_later(tmp_path: Path) -> None:
    with receiver_in_process(tmp_path) as (config, store):
        store.close()  # every query now fails as a database that does not answer
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", config.port, ae_title=config.ae_title)
        try:
            status, _ = assoc.send_n_action(_request([(CTImageStorage, generate_uid())]), 1, StorageCommitmentPushModel, WELL_KNOWN)
            assert status.Status == 0x0213  # resource limitation, not "malformed"
            assert status.ErrorComment == "database unavailable, ask again later"
        finally:
            assoc.release()
