"""Ingest: images per second received over C-STORE from dcmtk storescu on loopback, for a 500-slice 512 x 512
series, into the node (its own Upper Layer; each instance fsynced, renamed and its folder fsynced before the answer), a pynetdicom SCP that keeps nothing, dcmtk
storescp and Orthanc in one run; prints the node's ratio to each, and the most a receiver that fsyncs each instance
before answering can reach here (storescp's time per instance plus that). Then the aggregate rate of several storescu processes
sending a share of the series each at once (``--senders``, default 4), into the node and into storescp ``--fork``.

Every peer runs at its best: storescu, storescp and Orthanc with TCP_NODELAY=1 (Debian's dcmtk keeps Nagle's
algorithm on otherwise and stalls about 45 ms per instance), and storescp and Orthanc also at their largest PDU
(128 KiB; they announce 16 KiB by default, the node an unlimited one).

    .venv/bin/python -m benchmarks.ingest [--slices 500]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.series import big_study, machine
from dicomnode.base.files import fsync_folder
from tests.peers import PEER_ENV, NodeProcess, Orthanc, free_port, storescu, wait_for


def timed_send(port: int, called: str, files: list[Path]) -> float:
    os.sync()  # what the last receiver wrote is not flushed during this one's run
    start = time.perf_counter()
    result = storescu(port, called, files)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return elapsed


def timed_parallel_send(port: int, called: str, files: list[Path], senders: int) -> float:
    """Seconds for ``senders`` storescu processes, one association each, to send every ``senders``-th file at once."""
    command = ["storescu", "-R", "-aet", "STORESCU", "-aec", called, "127.0.0.1", str(port)]
    os.sync()
    start = time.perf_counter()
    processes = [
        subprocess.Popen([*command, *map(str, files[i::senders])], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=PEER_ENV) for i in range(senders)
    ]
    errors = [p.communicate()[1] for p in processes if p.wait() != 0]
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(errors[0])
    return elapsed


class CpuMeter:
    """CPU a process (all its threads) and the whole machine spent between ``start`` and ``stop``, in cores busy."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.begun = (0.0, 0.0, 0.0)

    def _now(self) -> tuple[float, float, float]:
        ticks = os.sysconf("SC_CLK_TCK")
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        process = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
        cpu = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        busy = (sum(cpu) - cpu[3] - cpu[4]) / ticks  # all but idle and iowait
        return time.perf_counter(), process, busy

    def start(self) -> None:
        self.begun = self._now()

    def stop(self) -> tuple[float, float]:
        """(cores the process kept busy, cores the machine kept busy) on average since ``start``."""
        now = self._now()
        wall = now[0] - self.begun[0]
        return (now[1] - self.begun[1]) / wall, (now[2] - self.begun[2]) / wall


def durable_store_ms(folder: Path, size: int, count: int = 50) -> float:
    """Median milliseconds to make a new file of ``size`` bytes durable under its name in ``folder`` as the node does
    for each instance before it answers: fsync the file, rename it, fsync the folder (storescp does none of it)."""
    data, times = os.urandom(size), []
    for k in range(count):
        temporary, path = folder / f".durable{k}.tmp", folder / f"durable{k}"
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            start = time.perf_counter()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        fsync_folder(folder)
        times.append(time.perf_counter() - start)
        path.unlink()
    return sorted(times)[count // 2] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--senders", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = big_study(work / "study", args.slices, 1.0).series[0].files
        size_mb = sum(f.stat().st_size for f in files) / 2**20
        rates: dict[str, list[float]] = {"node": [], "pynetdicom bare": [], "storescp": [], "storescp pdu128k": [], "orthanc": [], "orthanc pdu128k": []}
        parallel: dict[str, list[float]] = {"node": [], "storescp --fork": []}
        cores: dict[str, tuple[float, float]] = {}  # node process and machine, in cores busy, during the best run
        for repeat in range(args.repeats):
            node = NodeProcess(work / f"node{repeat}", [], extra={"quiet_period_s": 3600, "max_wait_s": 3600})
            node.start()
            try:
                assert node.process is not None
                meter = CpuMeter(node.process.pid)
                meter.start()
                rates["node"].append(len(files) / timed_send(node.port, node.ae_title, files))
                if rates["node"][-1] == max(rates["node"]):
                    cores["one sender"] = meter.stop()
            finally:
                node.stop()
            node = NodeProcess(work / f"node-parallel{repeat}", [], extra={"quiet_period_s": 3600, "max_wait_s": 3600})
            node.start()
            try:
                assert node.process is not None
                meter = CpuMeter(node.process.pid)
                meter.start()
                parallel["node"].append(len(files) / timed_parallel_send(node.port, node.ae_title, files, args.senders))
                if parallel["node"][-1] == max(parallel["node"]):
                    cores[f"{args.senders} senders"] = meter.stop()
            finally:
                node.stop()
            out = work / f"storescp-fork{repeat}"
            out.mkdir()
            port = free_port()
            scp = subprocess.Popen(["storescp", "--fork", "-od", str(out), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=PEER_ENV)
            try:
                time.sleep(0.5)
                parallel["storescp --fork"].append(len(files) / timed_parallel_send(port, "STORESCP", files, args.senders))
            finally:
                scp.terminate()
                scp.wait()
            port = free_port()  # pynetdicom itself, keeping nothing: what any pynetdicom receiver can reach at most
            bare = subprocess.Popen([sys.executable, "-m", "benchmarks.bare_scp", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(3)
                rates["pynetdicom bare"].append(len(files) / timed_send(port, "BARE", files))
            finally:
                bare.terminate()
                bare.wait()
            for name, pdu in (("storescp", []), ("storescp pdu128k", ["--max-pdu", "131072"])):
                out = work / f"{name.replace(' ', '-')}{repeat}"
                out.mkdir()
                port = free_port()
                scp = subprocess.Popen(["storescp", *pdu, "-od", str(out), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=PEER_ENV)
                try:
                    time.sleep(0.5)
                    rates[name].append(len(files) / timed_send(port, "STORESCP", files))
                finally:
                    scp.terminate()
                    scp.wait()
            for name, settings in (("orthanc", {}), ("orthanc pdu128k", {"MaximumPduLength": 131072})):
                orthanc = Orthanc(work / f"{name.replace(' ', '-')}{repeat}", settings=settings)
                orthanc.start()
                try:
                    rates[name].append(len(files) / timed_send(orthanc.dicom_port, orthanc.aet, files))
                    wait_for(lambda peer=orthanc: peer.get("/statistics")["CountInstances"] == len(files), 60, what="Orthanc to index")
                finally:
                    orthanc.stop()
    print(f"machine: {machine()}")
    print(f"series: {len(files)} slices 512x512, {size_mb:.0f} MiB, explicit VR little endian; storescu on loopback; best of {args.repeats}")
    best = {name: max(values) for name, values in rates.items()}
    for name, rate in best.items():
        print(f"{name:>16}: {rate:7.1f} images/s  ({rate * size_mb / len(files):6.1f} MiB/s)")
    for name in best:
        if name != "node":
            print(f"node / {name}: {best['node'] / best[name]:.2f}")
    together = {name: max(values) for name, values in parallel.items()}
    with tempfile.TemporaryDirectory() as tmp:
        durable = durable_store_ms(Path(tmp), int(size_mb * 2**20 / len(files)))
    ceiling = 1 / (1 / best["storescp"] + durable / 1000)
    print(f"making an instance-sized new file durable here (fsync, rename, fsync of its folder): {durable:.2f} ms (median of 50);")
    share = ceiling / best["storescp"]
    print(f"a receiver that does so before answering reaches at most 1 / (1 / storescp + that) = {ceiling:.1f} images/s, {share:.2f} of storescp")
    print(f"node / that ceiling: {best['node'] / ceiling:.2f}")
    print(f"{args.senders} storescu processes at once, one association each, a share of the series each:")
    for name, rate in together.items():
        print(f"{name:>16}: {rate:7.1f} images/s aggregate")
    print(f"node / storescp --fork: {together['node'] / together['storescp --fork']:.2f}")
    print(f"node {args.senders} senders / node one sender: {together['node'] / best['node']:.2f}")
    total = os.cpu_count() or 1
    for name, (process, busy) in cores.items():
        print(f"CPU, node with {name}: the node process {process:.2f} cores, the machine {busy:.2f} of {total} cores (storescu senders included)")


if __name__ == "__main__":
    main()
