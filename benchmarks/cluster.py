"""Cluster throughput: studies per hour with 1 and with 2 worker processes on one PostgreSQL database, the same
studies already received (the receiver's part is not timed), results delivered to Orthanc.

    .venv/bin/python -m benchmarks.cluster [--studies 6]

Each worker holds its own warm model; on a CPU the workers share its cores, so the ratio shows what a second
process adds there; on a cluster each worker has its own GPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.series import machine
from tests.peers import NodeProcess, Orthanc, storescu, wait_for
from tests.postgres import PostgresServer
from training.phantom_dicom import write_study
from training.phantoms import Grid, Phase


def studies_per_hour(work: Path, url: str, studies: list, workers: int) -> float:
    orthanc = Orthanc(work / "orthanc")
    orthanc.start()
    pacs = [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}]
    common = {
        "database": url, "storage": str(work / "storage"), "results": str(work / "results"), "web": {"enabled": False},
        "qc": {"on_fail": "flag"},  # every study gives SEG and SR, whatever QC finds
    }  # fmt: skip
    members = [NodeProcess(work / "rx", [], role="receiver", extra={**common, "cluster": {"name": "rx"}})]
    members.append(NodeProcess(work / "tx", pacs, role="sender", extra={**common, "cluster": {"name": "tx"}}))
    try:
        for node in members:
            node.start()
        for study in studies:
            assert storescu(members[0].port, members[0].ae_title, study.series[0].files).returncode == 0
        wait_for(lambda: len(members[0].jobs()) == len(studies), 120, 0.5, "every study complete")
        workers_started = time.time()
        for k in range(workers):
            worker = NodeProcess(work / f"gpu{k}", pacs, role="worker", extra={**common, "cluster": {"name": f"gpu{k}"}})
            members.append(worker)
            worker.start()

        def finished() -> bool:
            jobs = members[0].jobs()
            return all(j["state"] == "done" and j["delivery"] in ("delivered", "none") for j in jobs)

        wait_for(finished, 3600, 1.0, "every job done and delivered")
        return len(studies) / (time.time() - workers_started) * 3600
    finally:
        for node in members:
            node.stop()
        orthanc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=6)
    args = parser.parse_args()
    print(machine())
    server = PostgresServer()
    server.start()
    try:
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            studies = [write_study(900 + n, root / f"s{n}", phases=(Phase.ARTERIAL,), grid=Grid.centred(160, 1.6, 24, 5.0)) for n in range(args.studies)]
            rates = {}
            for workers in (1, 2):
                import psycopg

                name = f"bench{workers}"
                with psycopg.connect(server.url, autocommit=True) as connection:
                    connection.execute(f"CREATE DATABASE {name}")
                rates[workers] = studies_per_hour(root / f"w{workers}", server.url.replace("/dicomnode?", f"/{name}?"), studies, workers)
                print(f"{workers} worker(s): {rates[workers]:.0f} studies/hour ({args.studies} studies of 160 x 160 x 24)")
            print(f"2 workers / 1 worker: {rates[2] / rates[1]:.2f}")
    finally:
        server.remove()


if __name__ == "__main__":
    main()
