"""Awkward input through the network path: compressed and badly formed real data, non-CT instances in a study,
several senders at once; and the node's logs carry no patient identifiers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, SecondaryCaptureImageStorage, generate_uid

from tests.peers import REAL_CT as SHARED_REAL_CT
from tests.peers import NodeFactory, echoscu, storescu, tools_missing, wait_for
from training.phantom_dicom import write_study
from training.phantoms import Grid, Phase

pytestmark = pytest.mark.skipif(bool(tools_missing()), reason=f"missing tools: {tools_missing()}")

REAL_CT = SHARED_REAL_CT / "example_ct_dicom"


def _send_files_by_meta(port: int, called: str, files: list[Path]) -> list[int]:
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title="ARCHIVE")
    ae.add_requested_context(CTImageStorage, [pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    statuses = []
    try:
        for path in files:
            ds = pydicom.dcmread(path)
            ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
            statuses.append(int(assoc.send_c_store(ds).Status))
        return statuses
    finally:
        assoc.release()


def _secondary_capture(ct_file: Path, target: Path) -> Path:
    ds = pydicom.dcmread(ct_file)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID, ds.Modality, ds.SeriesDescription = generate_uid(), "OT", "Arterial summary (screen capture)"
    ds.save_as(target)
    return target


@pytest.mark.skipif(not REAL_CT.exists(), reason="shared real CT not present")
def test_compressed_study_is_processed_and_malformed_real_series_is_refused(tmp_path: Path, node_process: NodeFactory) -> None:
    study = write_study(4343, tmp_path / "study", phases=(Phase.NONCONTRAST, Phase.ARTERIAL), grid=Grid.centred(160, 1.6, 24, 5.0))
    for path in study.by_phase(Phase.ARTERIAL).files:
        ds = pydicom.dcmread(path)
        ds.compress(JPEG2000Lossless)
        ds.save_as(path)
    sc = _secondary_capture(study.by_phase(Phase.NONCONTRAST).files[0], tmp_path / "sc.dcm")
    node = node_process(tmp_path / "node", [])
    node.start()
    real = sorted(REAL_CT.iterdir())
    # dcmtk storescu will not send these (empty SOP Class UID in the data set); a sender that fills the SOP UIDs
    # from the file meta can. Study and Series UIDs stay empty: each is answered 0xC000, the reason recorded.
    assert _send_files_by_meta(node.port, node.ae_title, real) == [0xC000] * len(real)
    sent = storescu(node.port, node.ae_title, study.by_phase(Phase.NONCONTRAST).files + [sc])
    assert sent.returncode == 0, sent.stderr
    sent = storescu(node.port, node.ae_title, study.by_phase(Phase.ARTERIAL).files, extra=("-xv",))
    assert sent.returncode == 0, sent.stderr
    wait_for(lambda: [j["state"] for j in node.jobs()] == ["done"], 300, 0.5, "the phantom study to be processed")
    job = node.status()[0]
    assert job["series_uid"] == study.by_phase(Phase.ARTERIAL).series_uid
    assert any("modality OT, not CT" in reason for reason in job["reasons"])
    status = node.cli("status").stdout
    assert f"{len(real)} instances refused" in status and "invalid UID in the data set: StudyInstanceUID missing" in status
    assert echoscu(node.port, node.ae_title)


def test_offline_run_skips_junk_and_gives_a_verdict_for_the_real_series(tmp_path: Path, node_process: NodeFactory) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "notes.txt").write_text("not DICOM")
    (folder / "truncated.dcm").write_bytes(b"DICM" + b"\0" * 50)
    slice_without_uids = pydicom.dcmread(write_study(3, tmp_path / "one", phases=(Phase.ARTERIAL,), grid=Grid.centred(16, 10.0, 2, 5.0)).series[0].files[0])
    del slice_without_uids.StudyInstanceUID, slice_without_uids.SeriesInstanceUID
    slice_without_uids.save_as(folder / "no_uids.dcm")
    if REAL_CT.exists():  # real slices whose Study and Series Instance UIDs are empty
        for path in sorted(REAL_CT.iterdir()):
            (folder / path.name).write_bytes(path.read_bytes())
    node = node_process(tmp_path / "node", [])
    node.write_config()
    result = node.cli("run", str(folder), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "no processable DICOM study" in result.stderr
    assert "notes.txt: not readable DICOM" in result.stderr and "no Study/Series Instance UID" in result.stderr


def test_four_senders_two_studies_each_all_processed_once(tmp_path: Path, node_process: NodeFactory) -> None:
    studies = [
        write_study(500 + n, tmp_path / f"study{n}", phases=(Phase.ARTERIAL,), grid=Grid.centred(96, 3.2, 12, 8.0), patient_id=f"SECRET-ID-{n}")
        for n in range(8)
    ]
    node = node_process(tmp_path / "node", [])
    node.start()
    senders = [
        subprocess.Popen(
            [
                "storescu",
                "-R",
                "-aet",
                f"SENDER{k}",
                "-aec",
                node.ae_title,
                "127.0.0.1",
                str(node.port),
                *[str(f) for s in studies[2 * k : 2 * k + 2] for f in s.series[0].files],
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for k in range(4)
    ]
    assert [p.wait(timeout=300) for p in senders] == [0, 0, 0, 0]
    wait_for(lambda: len(node.jobs()) == 8 and all(j["state"] == "done" for j in node.jobs()), 600, 1.0, "eight jobs to finish")
    jobs = node.jobs()
    assert sorted(j["study_uid"] for j in jobs) == sorted(s.study_uid for s in studies)
    assert all(j["version"] == 1 and j["outcome"] != "failed" for j in jobs)
    log = node.log()
    assert "SECRET-ID" not in log and "Phantom^" not in log
