"""Cluster mode with real peers: a PostgreSQL server started by the tests (as a non-root user, on a socket in a
temporary folder), ``dicomnode serve --role ...`` processes sharing it and one storage folder, Orthanc as the PACS.
Nothing is lost or done twice when a study arrives over two receivers, a worker is killed or stalls past its lease,
or the database restarts during ingest."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import psycopg
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from dicomnode.base.uids import ResultUids, job_seed
from tests.peers import NodeFactory, NodeProcess, Orthanc, storescu, tools_missing, wait_for
from tests.postgres import PostgresServer
from training.phantom_dicom import StudyFiles, write_study
from training.phantoms import Grid, Phase

pytestmark = pytest.mark.skipif(bool(tools_missing()), reason=f"missing tools: {tools_missing()}")
GRID = Grid.centred(160, 1.6, 24, 5.0)
LEASE_S = 6.0


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> StudyFiles:
    return write_study(777, tmp_path_factory.mktemp("cluster"), phases=(Phase.NONCONTRAST, Phase.ARTERIAL), grid=GRID)


def _member(
    node_process: NodeFactory, shared: Path, url: str, name: str, role: str, destinations: list[dict] | None = None, database_wait_s: float = 5.0
) -> NodeProcess:
    extra = {
        "database": url,
        "storage": str(shared / "storage"),
        "results": str(shared / "results"),
        "cluster": {"name": name, "lease_s": LEASE_S, "receiver_timeout_s": 10, "database_wait_s": database_wait_s},
        "web": {"enabled": False},
    }
    return node_process(shared / name, destinations or [], role=role, extra=extra)


def _query(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as connection:
        return connection.execute(sql).fetchall()


def _results(orthanc: Orthanc) -> tuple[list[str], list[str]]:
    def uids(modality: str) -> list[str]:
        return [orthanc.get(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.instances_of_modality(modality)]

    return uids("SEG"), uids("SR")


def test_a_study_split_over_two_receivers_makes_exactly_one_job(tmp_path: Path, study: StudyFiles, pg_url: str, node_process: NodeFactory) -> None:
    first, second = (_member(node_process, tmp_path, pg_url, name, "receiver") for name in ("rx1", "rx2"))
    first.start()
    second.start()
    senders = [
        subprocess.Popen(
            ["storescu", "-aec", node.ae_title, "127.0.0.1", str(node.port), *map(str, series.files)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        for node, series in zip((first, second), study.series)
    ]
    assert [s.wait(timeout=120) for s in senders] == [0, 0]
    wait_for(lambda: len(first.jobs()) >= 1, 60, 0.5, "a job")
    time.sleep(4)  # several ticks of both completers
    jobs = first.jobs()
    total = sum(len(s.files) for s in study.series)
    assert len(jobs) == 1 and jobs[0]["version"] == 1
    assert _query(pg_url, f"SELECT COUNT(*) FROM instances WHERE seq <= {jobs[0]['upto_seq']}") == [(total,)]
    assert {r[0] for r in _query(pg_url, "SELECT calling_ae FROM instances")} and {r[0] for r in _query(pg_url, "SELECT name FROM receivers")} == {
        "rx1:" + str(first.port),
        "rx2:" + str(second.port),
    }


def _cluster(tmp_path: Path, pg_url: str, node_process: NodeFactory, orthanc: Orthanc) -> tuple[NodeProcess, NodeProcess, NodeProcess, NodeProcess]:
    pacs = [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}]
    receiver = _member(node_process, tmp_path, pg_url, "rx", "receiver")
    sender = _member(node_process, tmp_path, pg_url, "tx", "sender", pacs)
    worker_a = _member(node_process, tmp_path, pg_url, "gpuA", "worker", pacs)
    worker_b = _member(node_process, tmp_path, pg_url, "gpuB", "worker", pacs)
    orthanc.start()
    for node in (receiver, sender, worker_a):
        node.start()
    return receiver, sender, worker_a, worker_b


def _expected_uids(study: StudyFiles) -> tuple[list[str], list[str]]:
    uids = ResultUids(job_seed(study.study_uid, 1))
    return [uids.uid("seg")], [uids.uid("sr")]


def test_a_killed_workers_job_is_finished_by_another_once(tmp_path: Path, study: StudyFiles, pg_url: str, node_process: NodeFactory, orthanc: Orthanc) -> None:
    receiver, _, worker_a, worker_b = _cluster(tmp_path, pg_url, node_process, orthanc)
    assert storescu(receiver.port, receiver.ae_title, [f for s in study.series for f in s.files]).returncode == 0
    wait_for(lambda: any(str(j["lease_owner"] or "").startswith("gpuA:") for j in worker_a.jobs()), 120, 0.2, "worker A to hold the job")
    worker_a.stop(signal.SIGKILL)  # at once: with ONNX Runtime the job takes seconds, less than worker B's start
    worker_b.start()
    wait_for(lambda: _results(orthanc) != ([], []) and all(_results(orthanc)), 300, 1.0, "SEG and SR from worker B")
    time.sleep(3)
    assert _results(orthanc) == _expected_uids(study)  # exactly one of each, with the UIDs a clean run gives
    [job] = worker_b.jobs()
    assert (job["state"], job["outcome"]) == ("done", "result")
    assert "lease ran out" in worker_b.log()


def test_a_stalled_workers_late_finish_is_refused_and_nothing_is_duplicated(
    tmp_path: Path, study: StudyFiles, pg_url: str, node_process: NodeFactory, orthanc: Orthanc
) -> None:
    receiver, _, worker_a, worker_b = _cluster(tmp_path, pg_url, node_process, orthanc)
    assert storescu(receiver.port, receiver.ae_title, [f for s in study.series for f in s.files]).returncode == 0
    wait_for(lambda: any(str(j["lease_owner"] or "").startswith("gpuA:") for j in worker_a.jobs()), 120, 0.2, "worker A to hold the job")
    assert worker_a.process is not None
    worker_a.process.send_signal(signal.SIGSTOP)  # stalls past its lease
    worker_b.start()
    wait_for(lambda: all(_results(orthanc)), 300, 1.0, "SEG and SR from worker B")
    worker_a.process.send_signal(signal.SIGCONT)
    wait_for(lambda: "result discarded" in worker_a.log(), 300, 1.0, "worker A's late finish to be refused")
    time.sleep(3)
    assert _results(orthanc) == _expected_uids(study)
    assert _query(pg_url, "SELECT COUNT(*) FROM deliveries") == [(2,)]


def test_a_database_restart_during_ingest_loses_no_acknowledged_instance(
    tmp_path: Path, study: StudyFiles, postgres: PostgresServer, pg_url: str, node_process: NodeFactory
) -> None:
    receiver = _member(node_process, tmp_path, pg_url, "rx", "receiver", database_wait_s=1.0)  # each refusal waits this long
    receiver.start()
    files = [f for s in study.series for f in s.files]
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(CTImageStorage, pydicom.uid.ExplicitVRLittleEndian)
    statuses: dict[str, int] = {}
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title=receiver.ae_title)
    assert assoc.is_established
    try:
        for n, path in enumerate(files):
            if n == len(files) // 3:
                postgres.stop("fast")  # the database goes away mid-study ...
            if n == len(files) // 2:
                postgres.start()  # ... and comes back
            ds = pydicom.dcmread(path)
            statuses[str(ds.SOPInstanceUID)] = int(getattr(assoc.send_c_store(ds), "Status", -1))  # -1: no answer
    finally:
        assoc.release()
    indexed = {r[0] for r in _query(pg_url, "SELECT sop_uid FROM instances")}
    acknowledged = {uid for uid, status in statuses.items() if status == 0}
    refused = {uid for uid, status in statuses.items() if status != 0}
    assert refused and set(statuses.values()) == {0x0000, 0xA700}  # the gap was answered "out of resources"
    assert acknowledged <= indexed  # every acknowledged instance is indexed
    assert (
        storescu(receiver.port, receiver.ae_title, [p for p in files if str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) in refused]).returncode
        == 0
    )
    wait_for(lambda: len(receiver.jobs()) == 1, 60, 0.5, "the study to complete")
    assert {r[0] for r in _query(pg_url, "SELECT sop_uid FROM instances")} == set(statuses)
