"""Storage Commitment Push Model, the node as SCP: a scanner (here Orthanc, and pynetdicom) that pushed a study asks
the node to commit it before deleting its own copy. What the node holds is committed, what it does not hold is a
failure with a reason, and the report reaches the requester on the request's association or on a new one."""

from __future__ import annotations

import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, StorageCommitmentPushModel

from dicomnode.config import Peer
from tests.peers import Orthanc, receiver_in_process, storescu, tools_missing, wait_for
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


def test_pynetdicom_gets_the_report_on_its_own_association(tmp_path: Path, slices: list[Path]) -> None:
    with receiver_in_process(tmp_path) as (config, store):
        assert storescu(config.port, config.ae_title, slices).returncode == 0
        held = [(CTImageStorage, str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)) for p in slices]
        unknown = (CTImageStorage, generate_uid())
        reports: list[tuple[int, Dataset]] = []
        got = threading.Event()

        def on_report(event) -> int:
            reports.append((event.request.EventTypeID, event.event_information))
            got.set()
            return 0x0000

        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", config.port, ae_title=config.ae_title, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
        assert assoc.is_established
        try:
            request = _request([*held, unknown])
            status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel, WELL_KNOWN)
            assert status.Status == 0x0000
            assert got.wait(10)
        finally:
            assoc.release()
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
