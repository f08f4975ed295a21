"""End to end: seconds from the last instance sent (dcmtk storescu) to SEG and SR stored in Orthanc, for a
100-slice 5 mm, a 500-slice 1 mm and a 600-slice 1 mm study (512 x 512), split into stages from the node's job
record, with the node's peak memory.

    .venv/bin/python -m benchmarks.end_to_end [--studies 100x5 500x1] [--shadow MODEL]

With ``--shadow MODEL`` the node runs in shadow mode with that candidate: the figures are the live result's, and
"shadow s" says when the candidate's rows were recorded, counted from the live result stored in Orthanc.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

from benchmarks.series import big_study, machine
from tests.peers import NodeProcess, Orthanc, storescu, wait_for

STAGES = ("select", "load", "segment", "measure", "write")


def run_one(work: Path, slices: int, slice_mm: float, mirroring: bool, shadow: str = "") -> dict[str, float]:
    files = big_study(work / "study", slices, slice_mm).series[0].files
    orthanc = Orthanc(work / "orthanc")
    orthanc.start()
    node = NodeProcess(
        work / "node",
        [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}],
        extra={"quiet_period_s": 2, "qc": {"on_fail": "flag"}, **({"shadow": {"model": shadow}} if shadow else {})},
    )  # results are sent whatever QC finds
    node.start()
    try:
        if mirroring:
            node.stop()
            node.extra["model"] = {"folder": str(node.model_folder), "name": node.model_name, "device": "auto", "mirroring": True}
            node.start()
        result = storescu(node.port, node.ae_title, files)
        assert result.returncode == 0, result.stderr
        last_sent = time.time()
        wait_for(lambda: orthanc.instances_of_modality("SEG") and orthanc.instances_of_modality("SR"), 3600, 0.1, "results")
        stored = time.time()
        job = node.status()[0]
        assert node.process is not None
        peak_gib = peak_rss_gib(node.process.pid)
        stage_peaks = stage_peaks_gib(node.log())
        if shadow:
            wait_for(lambda: "shadow run of" in node.log(), 3600, 0.1, "the shadow run")
            shadow_after = time.time() - stored
    finally:
        node.stop()
        orthanc.stop()
    figures = {"total": stored - last_sent, "wait": job["created_at"] - last_sent}
    figures.update({stage: job["timings"].get(stage, 0.0) for stage in STAGES})
    figures["send"] = stored - (job["created_at"] + sum(job["timings"].values()))  # includes up to 0.1 s of polling
    figures["peak GiB"] = peak_gib
    if shadow:
        figures["shadow s"] = shadow_after
    figures.update({f"{stage} GiB": stage_peaks.get(stage, float("nan")) for stage in STAGES})
    return figures


def stage_peaks_gib(log: str) -> dict[str, float]:
    """Each stage's peak memory (GiB) from the node's last "stages (seconds, peak memory)" log line."""
    line = [text for text in log.splitlines() if "stages (seconds, peak memory):" in text][-1]
    found = re.findall(r"(\w+) [\d.]+ s ([\d.]+) GiB", line.split("peak memory):", 1)[1])
    return {stage: float(gib) for stage, gib in found}


def peak_rss_gib(pid: int) -> float:
    """Peak resident memory of a process so far (VmHWM), in GiB."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(line.split()[1] for line in status if line.startswith("VmHWM"))) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", nargs="+", default=["100x5", "500x1", "600x1"], help="SLICESxMM")
    parser.add_argument("--mirroring", action="store_true")
    parser.add_argument("--shadow", default="", help="a candidate model (folder name under models/) run in shadow mode")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print("quiet period 2 s; 'wait' = last instance sent -> job created (the quiet period); stages from the job record;")
    print("'send' = processing finished -> both results found in Orthanc (polled every 0.1 s)")
    columns = ("total", "wait", *STAGES, "send", "peak GiB", *(("shadow s",) if args.shadow else ()))
    print("peak GiB = the node process's peak resident memory (VmHWM) after the study; the row below each study gives")
    print("the process's peak within each stage, from the node's log")
    print(f"{'study':>12} " + " ".join(f"{name:>8}" for name in columns))
    for spec in args.studies:
        slices, mm = spec.split("x")
        with tempfile.TemporaryDirectory() as tmp:
            figures = run_one(Path(tmp), int(slices), float(mm), args.mirroring, args.shadow)
        print(f"{spec + ' mm':>12} " + " ".join(f"{figures[name]:8.1f}" for name in columns))
        print(f"{'peak GiB':>12} " + " ".join(f"{figures.get(name + ' GiB', float('nan')):8.2f}" if name in STAGES else " " * 8 for name in columns))
        slowest = max(("wait", *STAGES, "send"), key=lambda name: figures[name])
        print(f"{'':>12} slowest stage: {slowest}")


if __name__ == "__main__":
    main()
