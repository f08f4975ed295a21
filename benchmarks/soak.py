"""Soak: phantom studies from three storescu senders at once into one node on PostgreSQL, results to Orthanc, with
faults in the middle (one sender's studies ``--interval`` seconds apart, about ten minutes in all): the node killed
(SIGKILL) during a job and started again, the PACS stopped for a minute, and the database restarted. Every 30 s it
prints the node's resident memory, threads and open files; at the end, what came out per study: every study must
have exactly one SEG and one SR in Orthanc that no rejection note withdraws.

    .venv/bin/python -m benchmarks.soak [--studies 30] [--senders 3]

Bounded and on loopback only: every wait has a deadline.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg

from benchmarks.series import machine
from tests.peers import NodeProcess, Orthanc, storescu, wait_for
from tests.postgres import PostgresServer
from training.phantom_dicom import StudyFiles, write_study
from training.phantoms import Grid, Phase

SAMPLE_S = 30.0


def vitals(pid: int) -> tuple[float, int, int]:
    """Resident memory (MiB), threads and open file descriptors of a process."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) / 1024, int(status["Threads"]), len(os.listdir(f"/proc/{pid}/fd"))


class Sampler(threading.Thread):
    """Prints the node's vitals every SAMPLE_S seconds and keeps them."""

    def __init__(self, node: NodeProcess, started: float) -> None:
        super().__init__(daemon=True)
        self.node, self.started, self.samples = node, started, list[tuple[float, float, int, int]]()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(SAMPLE_S):
            process = self.node.process
            if process is None or process.poll() is not None:
                continue
            try:
                rss, threads, fds = vitals(process.pid)
                jobs = self.node.jobs()
            except (OSError, KeyError, psycopg.Error):  # the node restarting, the database down
                continue
            done = sum(j["state"] == "done" for j in jobs)
            self.samples.append((time.time() - self.started, rss, threads, fds))
            print(
                f"{time.time() - self.started:6.0f} s  RSS {rss:7.1f} MiB  threads {threads:3d}  open files {fds:4d}  jobs done {done:3d}/{len(jobs)}",
                flush=True,
            )


def send_all(node: NodeProcess, studies: list[StudyFiles], sent: list[str], failures: list[str], interval_s: float) -> None:
    for n, study in enumerate(studies):
        time.sleep(interval_s if n else 0.0)
        for _attempt in range(20):  # the node may be down (killed, restarting): send again until it answers
            if storescu(node.port, node.ae_title, study.series[0].files).returncode == 0:
                sent.append(study.study_uid)
                break
            time.sleep(3)
        else:
            failures.append(study.study_uid)


def outcome(orthanc: Orthanc, studies: list[StudyFiles]) -> tuple[Counter, Counter, set[str]]:
    """Per study: SEG and SR instances in Orthanc not withdrawn by a rejection note, and the instances withdrawn."""
    rejected: set[str] = set()
    for kos in orthanc.instances_of_modality("KO"):
        content = orthanc.get(f"/instances/{kos}/tags?simplify")
        for series in content.get("CurrentRequestedProcedureEvidenceSequence", [{}])[0].get("ReferencedSeriesSequence", []):
            rejected.update(item["ReferencedSOPInstanceUID"] for item in series.get("ReferencedSOPSequence", []))
    counts: dict[str, Counter] = {"SEG": Counter(), "SR": Counter()}
    for modality in counts:
        for instance in orthanc.instances_of_modality(modality):
            tags = orthanc.get(f"/instances/{instance}/simplified-tags")
            if tags["SOPInstanceUID"] not in rejected:
                counts[modality][tags["StudyInstanceUID"]] += 1
    return counts["SEG"], counts["SR"], rejected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=30)
    parser.add_argument("--senders", type=int, default=3)
    parser.add_argument("--interval", type=float, default=55.0, help="seconds between one sender's studies")
    args = parser.parse_args()
    print(machine())
    server = PostgresServer()
    server.start()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        studies = [
            write_study(3000 + n, root / f"s{n}", phases=(Phase.ARTERIAL,), grid=Grid.centred(128, 2.8, 24, 5.0), patient_id=f"SOAK{n}")
            for n in range(args.studies)
        ]
        with psycopg.connect(server.url, autocommit=True) as connection:
            connection.execute("CREATE DATABASE soak")
        url = server.url.replace("/dicomnode?", "/soak?")
        orthanc = Orthanc(root / "orthanc")
        orthanc.start()
        pacs = [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}]
        node = NodeProcess(root / "node", pacs, extra={"database": url, "qc": {"on_fail": "flag"}, "max_wait_s": 60})
        node.start()
        started = time.time()
        sampler = Sampler(node, started)
        sampler.start()
        sent: list[str] = []
        failures: list[str] = []
        chunks = [studies[k :: args.senders] for k in range(args.senders)]
        senders = [threading.Thread(target=send_all, args=(node, chunk, sent, failures, args.interval)) for chunk in chunks]
        faults = []
        try:
            for thread in senders:
                thread.start()
            time.sleep(args.interval)  # a few studies in, then the faults, spread over the run
            wait_for(lambda: any(j["state"] == "running" for j in node.jobs()), 600, 0.1, "a job running")
            assert node.process is not None
            node.process.send_signal(signal.SIGKILL)
            node.process.wait()
            node.process = None
            faults.append(f"{time.time() - started:.0f} s: node killed during a job (SIGKILL)")
            node.start()
            faults.append(f"{time.time() - started:.0f} s: node started again")
            time.sleep(2 * args.interval)
            orthanc.stop()
            faults.append(f"{time.time() - started:.0f} s: PACS stopped for 60 s")
            time.sleep(60)
            orthanc.start()
            time.sleep(2 * args.interval)
            server.stop()
            faults.append(f"{time.time() - started:.0f} s: PostgreSQL stopped for 10 s")
            time.sleep(10)
            server.start()
            for thread in senders:
                thread.join(timeout=1200)

            def settled() -> bool:
                jobs = node.jobs()
                ready = {j["study_uid"] for j in jobs if j["state"] == "done" and j["delivery"] in ("delivered", "superseded")}
                return ready >= set(sent)

            wait_for(settled, 1800, 2.0, "every study done and delivered")
            time.sleep(SAMPLE_S + 1)
            segs, srs, rejected = outcome(orthanc, studies)
        finally:
            sampler.done.set()
            node.stop()
            orthanc.stop()
            server.remove()
        elapsed = time.time() - started
        print(f"\n{len(studies)} studies, {args.senders} senders, {elapsed:.0f} s")
        for line in faults:
            print(f"  fault: {line}")
        exact = [uid for uid in sent if segs[uid] == 1 and srs[uid] == 1]
        print(f"studies acknowledged: {len(sent)}, failed to send: {len(failures)}")
        print(f"studies with exactly one SEG and one SR in Orthanc (not rejected): {len(exact)} of {len(sent)}")
        print(f"results withdrawn by rejection notes: {len(rejected)}")
        wrong = {uid: (segs[uid], srs[uid]) for uid in sent if uid not in exact}
        if wrong:
            print(f"  not exactly one: {wrong}")
        if sampler.samples:
            first, settle, last = sampler.samples[0], sampler.samples[len(sampler.samples) // 2], sampler.samples[-1]
            print("| when | s | RSS MiB | threads | open files |\n| --- | --- | --- | --- | --- |")
            for name, sample in (("first sample", first), ("half way", settle), ("end", last)):
                print(f"| {name} | {sample[0]:.0f} | {sample[1]:.0f} | {sample[2]} | {sample[3]} |")
            print(f"end vs half way: RSS {100 * (last[1] / settle[1] - 1):+.1f} %, threads {last[2] - settle[2]:+d}, open files {last[3] - settle[3]:+d}")


if __name__ == "__main__":
    main()
