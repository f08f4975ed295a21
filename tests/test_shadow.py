"""Shadow mode: a candidate model runs on each live study after the live result is queued, its agreement with the live
model is recorded, shown and written into its card, and nothing of it is sent.

The live model is a stand-in that returns each phantom's own labels; the candidate is one that grows the parenchyma
by a voxel in-plane (as cortex) and takes its time, so its volumes, its Dice and its timing are known in advance:
parenchyma and cortex larger, Dice 2|live| / (|live| + |candidate|) since the live masks lie inside the candidate's,
medulla the same."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from scipy import ndimage

from dicomnode.analysis.agreement import Agreement
from dicomnode.analysis.measure import Measurements
from dicomnode.config import NodeConfig, SettingError, ShadowConfig, load_config
from dicomnode.imaging.load import LoadedSeries
from dicomnode.instance import Instance
from dicomnode.node.pipeline import Processed
from dicomnode.node.service import Node
from dicomnode.node.shadow import ShadowRunner, shadow_runner
from dicomnode.renal import Side, Structure
from dicomnode.segment.model import Model, Segmentation, TissueLabel
from dicomnode.store import Store
from dicomnode.store.states import Outcome
from tests.peers import Orthanc, free_port, storescu, tools_missing, wait_for
from training.phantom_dicom import StudyFiles, write_study
from training.phantoms import Grid, Label, Phase

GRID = Grid.centred(96, 3.5, 36, 5.0)
#: How long the candidate stand-in takes per study: well beyond a live job's delivery on loopback.
SLOW_S = 4.0
CANDIDATE = "candidate"


class PhantomModel:
    """A stand-in segmenter: each series' phantom labels; with ``grow``, the parenchyma grown by one voxel in-plane
    (the ring labelled cortex) after ``delay_s``; with ``hold``, it waits for that event first."""

    def __init__(self, studies: list[StudyFiles], name: str, grow: bool = False, delay_s: float = 0.0, hold: threading.Event | None = None) -> None:
        self.model = Model(name, Path("."), {"version": "test"}, "0")
        self.truth = {s.series[0].series_uid: s.series[0].phantom.labels for s in studies}
        self.grow, self.delay_s, self.hold = grow, delay_s, hold
        self.device = "cpu"
        self.started = threading.Event()

    def segment(self, series: LoadedSeries) -> Segmentation:
        self.started.set()
        if self.hold is not None:
            self.hold.wait(60)
        time.sleep(self.delay_s)
        truth = self.truth[str(series.datasets[0].SeriesInstanceUID)]
        labels = np.zeros(truth.shape, np.uint8)
        labels[truth == Label.CORTEX] = TissueLabel.CORTEX
        labels[truth == Label.MEDULLA] = TissueLabel.MEDULLA
        if self.grow:
            in_plane = np.zeros((3, 3, 3), bool)
            in_plane[1] = ndimage.generate_binary_structure(2, 1)
            labels[ndimage.binary_dilation(labels > 0, in_plane) & (labels == 0)] = TissueLabel.CORTEX
        return Segmentation(labels, self.model, "cpu")


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> list[StudyFiles]:
    folder = tmp_path_factory.mktemp("shadow")
    return [write_study(seed, folder / str(seed), phases=(Phase.ARTERIAL,), grid=GRID, patient_id=f"SHADOW-{seed}") for seed in (71, 72)]


def _config_file(folder: Path, destinations: list[dict], shadow: dict) -> Path:
    settings = {
        "port": free_port(),
        "storage": "storage",
        "database": "node.sqlite",
        "results": "results",
        "quiet_period_s": 1,
        "max_wait_s": 30,
        "tick_s": 0.3,
        "min_free_disk_mb": 50,
        "retention": {"free_disk_mb": 100},
        "web": {"port": free_port()},
        "delivery": {"backoff_s": 1, "max_backoff_s": 2},
        "model": {"folder": "models"},
        "shadow": shadow,
        "destinations": destinations,
    }
    card = folder / "models" / CANDIDATE / "model.yaml"
    card.parent.mkdir(parents=True)
    card.write_text("name: candidate\nversion: '2'\n")
    (folder / "config.yaml").write_text(yaml.safe_dump(settings))
    return folder / "config.yaml"


def _get(config: NodeConfig, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{config.web.port}{path}", timeout=10) as response:
        return response.read().decode()


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dicomnode.node.cli", "--config", str(config), *args], capture_output=True, text=True)


@pytest.mark.skipif(bool(tools_missing()), reason=f"missing tools: {tools_missing()}")
def test_shadow_mode_records_agreement_for_each_live_study_sends_nothing_and_does_not_delay_the_live_result(
    studies: list[StudyFiles], orthanc: Orthanc, tmp_path: Path
) -> None:
    orthanc.start()
    pacs = [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}]
    path = _config_file(tmp_path / "node", pacs, {"model": CANDIDATE, "last_n": 5})
    config = load_config(path)
    candidate = PhantomModel(studies, "phantom-grown", grow=True, delay_s=SLOW_S)
    node = Node(config, segmenter=PhantomModel(studies, "phantom-labels"), candidate=candidate)
    node.start()
    try:
        for study in studies:
            sent = storescu(config.port, config.ae_title, study.series[0].files)
            assert sent.returncode == 0, sent.stderr
            [job] = wait_for(lambda s=study: [j for j in node.store.jobs() if j.study_uid == s.study_uid and j.delivery.value == "delivered"], 120, 0.2, "live")
            delivered_at = node.store.db.query("SELECT MAX(updated_at) AS t FROM deliveries WHERE job_id = ? AND state = 'sent'", (job.id,))[0]["t"]
            rows = wait_for(lambda j=job: [r for r in node.store.shadow_records("renal-synth3-cpu", CANDIDATE) if r.job_id == j.id], 60, 0.2, "shadow")
            assert min(r.recorded_at for r in rows) > delivered_at + SLOW_S / 2  # delivered while the candidate was still at work
        page, metrics = _get(config, "/"), _get(config, "/metrics")
    finally:
        node.stop()

    store = Store(config.path(config.database))
    records = store.shadow_records("renal-synth3-cpu", CANDIDATE)
    jobs = {j.study_uid: j.id for j in store.jobs()}
    assert sorted({(r.study_uid, r.job_id) for r in records}) == sorted(jobs.items()) and len(records) == 2 * 2 * 3  # studies x sides x structures
    for r in records:
        if r.structure == "medulla":
            assert (r.candidate_ml, r.dice) == (pytest.approx(r.live_ml), 1.0)
        else:
            assert r.candidate_ml > r.live_ml > 0 and r.dice < 0.95
            assert r.dice == pytest.approx(2 * r.live_ml / (r.live_ml + r.candidate_ml))  # the live mask lies inside the candidate's
    agreement = {a.structure: a for a in store.shadow_agreement("renal-synth3-cpu", CANDIDATE, 5)}
    parenchyma = agreement["parenchyma"]
    assert (parenchyma.studies, parenchyma.kidneys) == (2, 4)
    differences = [r.candidate_ml - r.live_ml for r in records if r.structure == "parenchyma"]
    assert parenchyma.mean_abs_diff_ml == pytest.approx(np.mean(differences)) and parenchyma.max_abs_diff_ml == pytest.approx(max(differences))
    assert store.shadow_agreement("renal-synth3-cpu", CANDIDATE, 1)[0].studies == 1  # last_n counts studies, the latest first

    # only the live results were sent: one SEG and one SR per study, made by the live model; the results folder holds
    # nothing the deliveries do not name
    segs, srs = orthanc.instances_of_modality("SEG"), orthanc.instances_of_modality("SR")
    assert (len(segs), len(srs), len(orthanc.get("/instances"))) == (2, 2, 4)
    for n, seg in enumerate(segs):
        ds = pydicom.dcmread(orthanc.download(seg, tmp_path / f"seg{n}.dcm"))
        assert {str(s.SegmentAlgorithmName) for s in ds.SegmentSequence} == {"phantom-labels"}
    queued = {Path(d.path).resolve() for job_id in jobs.values() for d in store.deliveries(job_id)}
    assert {p.resolve() for p in config.path(config.results).rglob("*.dcm")} == queued
    store.close()

    # the status page, the metrics and ``dicomnode status`` show the agreement
    assert '<h2 id="shadow">Shadow model</h2>' in page and f"Shadow model {CANDIDATE} beside renal-synth3-cpu" in page
    assert f"<tr><td>parenchyma</td><td>2</td><td>4</td><td>{parenchyma.mean_abs_diff_ml:.1f}</td>" in page
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    assert families["dicomnode_shadow_studies"].samples[0].value == 2
    dice = {s.labels["structure"]: s.value for s in families["dicomnode_shadow_mean_dice"].samples}
    assert dice["medulla"] == 1.0 and dice["parenchyma"] == pytest.approx(parenchyma.mean_dice) and dice["parenchyma"] < 0.95
    diff = {s.labels["structure"]: s.value for s in families["dicomnode_shadow_mean_abs_diff_ml"].samples}
    assert diff["parenchyma"] == pytest.approx(parenchyma.mean_abs_diff_ml)
    status = _cli(path, "status")
    assert status.returncode == 0, status.stderr
    assert f"Shadow model {CANDIDATE} beside renal-synth3-cpu" in status.stdout and "parenchyma 2 studies (4 kidneys)" in status.stdout.replace("  ", " ")
    shown = json.loads(_cli(path, "status", "--json").stdout)["shadow"]
    assert [s["structure"] for s in shown] == ["parenchyma", "cortex", "medulla"]

    # the candidate's card records what the shadow run showed
    recorded = _cli(path, "shadow-report", "--record")
    assert recorded.returncode == 0, recorded.stderr
    card = yaml.safe_load((tmp_path / "node" / "models" / CANDIDATE / "model.yaml").read_text())
    assert card["name"] == "candidate" and card["shadow"]["studies"] == 2 and card["shadow"]["live_model"] == "renal-synth3-cpu"
    assert card["shadow"]["structures"]["parenchyma"]["mean_dice"] == pytest.approx(parenchyma.mean_dice, abs=1e-4)


@pytest.mark.skipif(bool(tools_missing()), reason=f"missing tools: {tools_missing()}")
def test_with_shadow_mode_off_no_shadow_run_starts_and_nothing_is_recorded_or_shown(studies: list[StudyFiles], tmp_path: Path) -> None:
    path = _config_file(tmp_path / "node", [], {"last_n": 5})
    config = load_config(path)
    candidate = PhantomModel(studies, "phantom-grown", grow=True)
    node = Node(config, segmenter=PhantomModel(studies, "phantom-labels"), candidate=candidate)
    assert node.shadow is None
    node.start()
    try:
        assert storescu(config.port, config.ae_title, studies[0].series[0].files).returncode == 0
        wait_for(lambda: [j.outcome for j in node.store.jobs()] == [Outcome.RESULT], 120, 0.2, "the live job")
        page, metrics = _get(config, "/"), _get(config, "/metrics")
    finally:
        node.stop()
    assert not candidate.started.is_set() and not any(t.name.startswith("shadow") for t in threading.enumerate())
    store = Store(config.path(config.database))
    assert store.db.query("SELECT COUNT(*) AS n FROM shadow")[0]["n"] == 0
    store.close()
    assert "Shadow model" not in page and "dicomnode_shadow" not in metrics
    assert "Shadow model" not in _cli(path, "status").stdout
    refused = _cli(path, "shadow-report")
    assert refused.returncode == 2 and "shadow mode is off" in refused.stderr


def test_a_live_job_done_while_the_candidate_is_busy_gets_no_shadow_run_and_the_log_says_so(
    studies: list[StudyFiles], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    series = studies[0].series[0]
    config = NodeConfig(shadow=ShadowConfig(CANDIDATE))
    store = Store(tmp_path / "node.sqlite")
    release = threading.Event()
    candidate = PhantomModel(studies, "phantom-grown", hold=release)
    runner = ShadowRunner(config, store, lambda: candidate)
    instances = [Instance(n, f"1.2.{n}", studies[0].study_uid, series.series_uid, "", f) for n, f in enumerate(series.files)]
    live = Processed(Outcome.NO_RESULT, "no kidney found in the series", [], series.series_uid, Measurements({}))  # the live model found none
    with caplog.at_level(logging.INFO, logger="dicomnode.node.shadow"):
        assert runner.offer(1, studies[0].study_uid, live, instances)
        assert candidate.started.wait(30)
        assert not runner.offer(2, studies[0].study_uid, live, instances)
        release.set()
        runner.stop()
    assert "job 2: shadow run skipped: the candidate candidate is still busy with job 1" in caplog.text
    assert not runner.offer(3, studies[0].study_uid, live, instances)  # stopped
    records = store.shadow_records(config.model.name, CANDIDATE)
    assert {r.job_id for r in records} == {1} and len(records) == 6
    assert all(r.live_ml == 0 and r.candidate_ml > 0 and r.dice == 0 for r in records)  # a kidney only the candidate found
    assert not runner.offer(4, studies[0].study_uid, Processed(Outcome.NO_RESULT, "no arterial series", []), instances)  # nothing measured
    store.close()


def test_a_candidate_folder_that_is_not_there_is_a_setting_error_naming_it(tmp_path: Path) -> None:
    config = NodeConfig(base_dir=tmp_path, shadow=ShadowConfig("no-such-model"))
    store = Store(tmp_path / "node.sqlite")
    with pytest.raises(SettingError, match=f"^shadow.model: model folder {tmp_path / 'models' / 'no-such-model'} not found$"):
        shadow_runner(config, store)
    assert shadow_runner(NodeConfig(base_dir=tmp_path), store) is None
    store.close()


def test_the_store_keeps_one_set_of_rows_per_job_and_sums_up_the_last_studies(store: Store) -> None:
    def compared(live: float, candidate: float, dice: float) -> list[Agreement]:
        return [Agreement(Structure.PARENCHYMA, side, live, candidate, dice) for side in (Side.LEFT, Side.RIGHT)]

    store.record_shadow(1, "1.1", "live", CANDIDATE, compared(100.0, 90.0, 0.9))
    store.record_shadow(2, "1.2", "live", CANDIDATE, compared(100.0, 50.0, 0.5))
    store.record_shadow(2, "1.2", "live", CANDIDATE, compared(100.0, 104.0, 0.96))  # the job's rows again: replaced
    store.record_shadow(3, "1.3", "live", CANDIDATE, [Agreement(Structure.PARENCHYMA, Side.LEFT, 0.0, 80.0, 0.0)])  # only the candidate found it
    store.record_shadow(4, "1.4", "live", "another", compared(100.0, 10.0, 0.1))
    assert [(r.job_id, r.candidate_ml) for r in store.shadow_records("live", CANDIDATE)] == [(1, 90.0), (1, 90.0), (2, 104.0), (2, 104.0), (3, 80.0)]
    [last_two] = store.shadow_agreement("live", CANDIDATE, 2)
    assert (last_two.structure, last_two.studies, last_two.kidneys) == ("parenchyma", 2, 3)
    assert (last_two.mean_abs_diff_ml, last_two.max_abs_diff_ml) == (pytest.approx(88 / 3), 80.0)
    assert (last_two.mean_abs_diff_percent, last_two.max_abs_diff_percent) == (4.0, 4.0)  # none for a kidney the live model did not find
    assert (last_two.mean_dice, last_two.min_dice) == (pytest.approx(1.92 / 3), 0.0)
    assert store.shadow_agreement("live", CANDIDATE, 20)[0].studies == 3 and store.shadow_agreement("other live", CANDIDATE, 20) == []
    with pytest.raises(ValueError, match="last_n: must be at least 1"):
        store.shadow_records("live", CANDIDATE, 0)
