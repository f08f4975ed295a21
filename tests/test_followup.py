"""Follow-up: a patient's results over time. Three studies of one phantom patient go storescu -> node -> Orthanc: the
first a year before the last, the second between them with a stray blob that fails QC. The last one's SR gives each
kidney's change since the first within 1 ml of the phantoms' truth and names the second as not compared; its summary
page charts the volumes over time; the history outlives retention and a restart, the cohort export equals the SR
volumes, and the patient's purge removes the history and is logged.

The prediction is each phantom's own labels, so the test needs no model and knows every volume in advance."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
import yaml
from PIL import Image

from dicomnode.analysis.followup import compare
from dicomnode.config import Retention, load_config
from dicomnode.imaging.load import LoadedSeries
from dicomnode.measured import HistoryEntry, Patient
from dicomnode.node.export import COLUMNS, Format, csv_text, pseudonym, write_table
from dicomnode.node.retention import clean
from dicomnode.node.service import Node
from dicomnode.results.codes import DIFFERENCE_IN_SIZE
from dicomnode.segment.model import Model, Segmentation, TissueLabel
from dicomnode.store import Store
from dicomnode.store.states import Outcome
from tests.peers import REPO, Orthanc, dciodvfy, free_port, storescu, tools_missing, wait_for
from tests.readback import sr_changes, sr_groups, sr_texts
from training.phantom_dicom import StudyFiles, write_study
from training.phantoms import Grid, Label, Phase

GRID = Grid.centred(96, 3.5, 36, 5.0)
PATIENT = "FOLLOWUP-1"
#: (seed, study date) of each study: the first and the last a year apart, the second (FAILED) between them.
STUDIES = ((61, "20250115"), (62, "20250701"), (63, "20260115"))
FAILED = 1


class PhantomTruth:
    """A stand-in segmenter: each series' phantom labels, and for the series in ``stray`` a 35 ml blob in front of
    the spine (stray kidney, so QC fails)."""

    model = Model("phantom-labels", Path("."), {"version": "test"}, "0")

    def __init__(self, studies: list[StudyFiles], stray: set[str]) -> None:
        self.truth = {s.series[0].series_uid: s.series[0].phantom.labels for s in studies}
        self.stray = stray

    def segment(self, series: LoadedSeries) -> Segmentation:
        uid = str(series.datasets[0].SeriesInstanceUID)
        truth = self.truth[uid]
        labels = np.zeros(truth.shape, np.uint8)
        labels[truth == Label.CORTEX] = TissueLabel.CORTEX
        labels[truth == Label.MEDULLA] = TissueLabel.MEDULLA
        if uid in self.stray:
            labels[8:12, 20:32, 42:54] = TissueLabel.CORTEX
        return Segmentation(labels, self.model, "cpu")


def _dated(study: StudyFiles, date: str) -> StudyFiles:
    for path in study.series[0].files:
        ds = pydicom.dcmread(path)
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date
        ds.save_as(path)
    return study


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> list[StudyFiles]:
    folder = tmp_path_factory.mktemp("followup")
    return [_dated(write_study(seed, folder / str(seed), phases=(Phase.ARTERIAL,), grid=GRID, patient_id=PATIENT), date) for seed, date in STUDIES]


def _config_file(folder: Path, orthanc: Orthanc) -> Path:
    settings = {
        "port": free_port(),
        "storage": "storage",
        "database": "node.sqlite",
        "results": "results",
        "quiet_period_s": 1,
        "max_wait_s": 30,
        "tick_s": 0.3,
        "min_free_disk_mb": 50,
        "retention": {"free_disk_mb": 100, "days": 30},
        "web": {"port": free_port()},
        "delivery": {"backoff_s": 1, "max_backoff_s": 2},
        "destinations": [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port, "formats": ["seg", "sr", "sc"]}],
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(settings))
    return folder / "config.yaml"


def _of_study(orthanc: Orthanc, modality: str, study_uid: str) -> list[str]:
    return orthanc.post("/tools/find", {"Level": "Instance", "Query": {"Modality": modality, "StudyInstanceUID": study_uid}})


def _cli(config: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dicomnode.node.cli", "--config", str(config), *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


@pytest.mark.skipif(bool(tools_missing()), reason=f"missing tools: {tools_missing()}")
def test_a_follow_up_pair_gives_each_kidneys_change_in_the_sr_and_a_chart_and_the_history_outlives_retention(
    studies: list[StudyFiles], orthanc: Orthanc, tmp_path: Path
) -> None:
    orthanc.start()
    config_path = _config_file(tmp_path / "node", orthanc)
    config = load_config(config_path)
    standin = PhantomTruth(studies, stray={studies[FAILED].series[0].series_uid})
    node = Node(config, segmenter=standin)
    node.start()
    try:
        for n, study in enumerate(studies):
            sent = storescu(config.port, config.ae_title, study.series[0].files)
            assert sent.returncode == 0, sent.stderr
            wanted = [Outcome.NO_RESULT] if n == FAILED else [Outcome.RESULT]
            wait_for(lambda s=study, w=wanted: [j.outcome for j in node.store.jobs() if j.study_uid == s.study_uid] == w, 120, 0.3, f"study {n + 1} done")
            if n != FAILED:
                wait_for(lambda s=study: len(_of_study(orthanc, "OT", s.study_uid)) == 3 and _of_study(orthanc, "SR", s.study_uid), 60, 0.5, "results")
        status = urllib.request.urlopen(f"http://127.0.0.1:{config.web.port}/", timeout=10).read().decode()
        last_job = max(j.id for j in node.store.jobs())
        assert f"href='/history/{last_job}'" in status
        page = urllib.request.urlopen(f"http://127.0.0.1:{config.web.port}/history/{last_job}", timeout=10).read().decode()
    finally:
        node.stop()

    # the history page: three studies by date, the failed one withheld, no patient ID (log_patient_data is off)
    assert [d for _, d in STUDIES] == [d for d in (line.split("<td>")[1].split("</td>")[0] for line in page.split("<tr")[2:])]
    assert PATIENT not in page and "withheld" in page and "identifiers hidden" in page

    first, failed, last = studies
    srs = {}
    for study in (first, last):
        [sr_id] = _of_study(orthanc, "SR", study.study_uid)
        path = orthanc.download(sr_id, tmp_path / f"sr_{study.study_uid}.dcm")
        assert dciodvfy(path) == []
        srs[study.study_uid] = pydicom.dcmread(path)
    assert sr_changes(srs[first.study_uid]) == {}  # no earlier result
    changes = sr_changes(srs[last.study_uid])
    truth_first, truth_last = first.series[0].phantom.volumes_ml, last.series[0].phantom.volumes_ml
    assert set(changes) == {f"{side} renal {s}" for side in ("left", "right") for s in ("parenchyma", "cortex", "medulla")}
    for identifier, change in changes.items():
        side, _, structure = identifier.split(" ")
        true_change = truth_last[f"{structure}_{side}"] - truth_first[f"{structure}_{side}"]
        assert change.by_unit["cm3"] == pytest.approx(true_change, abs=1.0), identifier
        assert change.prior_ml == pytest.approx(truth_first[f"{structure}_{side}"], abs=1.0)
        assert change.by_unit["%"] == pytest.approx(100 * change.by_unit["cm3"] / change.prior_ml, abs=0.01)
        assert change.by_unit["cm3/a"] == pytest.approx(change.by_unit["cm3"] * 365.25 / 365, abs=0.01)  # 2025-01-15 to 2026-01-15
        assert (change.prior_study_uid, change.prior_date) == (first.study_uid, "20250115")
    assert any(t.startswith("Renal parenchyma not compared with the study of 2025-07-01") and "QC failed" in t for t in sr_texts(srs[last.study_uid]))
    assert not any(failed.study_uid in str(c) for c in changes.values())

    # highdicom reads the changes back with their units
    report = hd.sr.srread(tmp_path / f"sr_{last.study_uid}.dcm")
    [group] = [g for g in report.content.get_volumetric_roi_measurement_groups() if g.tracking_identifier == "left renal parenchyma"]
    units = sorted(m.unit.value for m in group.get_measurements(name=DIFFERENCE_IN_SIZE))
    assert units == ["%", "cm3", "cm3/a"]
    # and so does dcmqi's tid1500reader, the reader 3D Slicer uses: the volume first in each group, then the changes
    meta = tmp_path / "sr.json"
    tid1500reader = Path(sys.executable).parent / "tid1500reader"
    run = subprocess.run([str(tid1500reader), "--inputDICOM", str(tmp_path / f"sr_{last.study_uid}.dcm"), "--outputMetadata", str(meta)], capture_output=True)
    assert run.returncode == 0, run.stderr[-2000:]
    read = {m["TrackingIdentifier"]: m["measurementItems"] for m in json.loads(meta.read_text())["Measurements"] if m.get("measurementItems")}
    assert [item["units"]["CodeValue"] for item in read["left renal parenchyma"]] == ["cm3", "cm3", "%", "cm3/a"]
    assert float(read["left renal parenchyma"][1]["value"]) == pytest.approx(changes["left renal parenchyma"].by_unit["cm3"])

    # the summary pages: the last one charts both sides, the failed prior as a hollow grey mark; the first has no chart
    pages = {}
    for study in (first, last):
        [summary] = [i for i in _of_study(orthanc, "OT", study.study_uid) if orthanc.get(f"/instances/{i}/simplified-tags")["InstanceNumber"] == "1"]
        pixels = pydicom.dcmread(orthanc.download(summary, tmp_path / "summary.dcm")).pixel_array
        Image.fromarray(pixels).save(tmp_path / f"summary_{study.series[0].phantom.anatomy.seed}.png")
        pages[study.study_uid] = pixels
    chart = pages[last.study_uid][int(0.70 * 768) :, :]  # the charts' panels
    orange = np.all(np.abs(chart.astype(int) - [0xFF, 0x9A, 0x30]) < 40, axis=-1)
    grey = np.all(np.abs(chart.astype(int) - [0x90, 0x90, 0x90]) < 12, axis=-1)
    assert orange[:, :384].sum() > 50 and orange[:, 384:].sum() > 50, "parenchyma lines on both panels"
    assert grey.sum() > 20, "the failed prior's marks"
    first_bottom = pages[first.study_uid][int(0.70 * 768) :, :]
    assert np.all(np.abs(first_bottom.astype(int) - [0xFF, 0x9A, 0x30]) < 40, axis=-1).sum() == 0
    print(f"\nsummary pages: {tmp_path}/summary_*.png")
    if os.environ.get("DICOMNODE_UPDATE_DOCS"):  # refreshes the README's picture
        shutil.copy(tmp_path / f"summary_{last.series[0].phantom.anatomy.seed}.png", REPO / "docs" / "followup-summary.png")

    # the history outlives retention's purge of every study, and a restart
    store = Store(config.path(config.database))
    purged = clean(store, config.path(config.storage), config.path(config.results), Retention(days=1, free_disk_mb=0), now=store.now() + 10 * 86400)
    assert len(purged) == 3 and store.counts().instances_stored == 0
    store.close()
    node = Node(config, segmenter=standin)
    node.start()
    node.stop()
    store = Store(config.path(config.database))
    entries = store.history.entries()
    assert [(e.study_uid, e.withheld) for e in entries] == [(s.study_uid, n == FAILED) for n, s in enumerate(studies)]
    store.close()

    # the cohort table: its volumes are the SRs' volumes; --qc passed leaves the failed study out
    out = _cli(config_path, "export", "--format", "csv", "--out", str(tmp_path / "cohort.csv"))
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader((tmp_path / "cohort.csv").read_text().splitlines()))
    assert tuple(rows[0]) == COLUMNS
    assert [r["study_uid"] for r in rows] == [s.study_uid for s in studies] and rows[FAILED]["result"] == "withheld"
    for study in (first, last):
        [row] = [r for r in rows if r["study_uid"] == study.study_uid]
        for group in (g for g in sr_groups(srs[study.study_uid]) if g.segment_number):
            side, _, structure = group.identifier.split(" ")
            assert float(row[f"{structure}_{side}_ml"]) == group.volume_ml, (study.study_uid, group.identifier)
    passed = _cli(config_path, "export", "--qc", "passed")
    assert [r["study_uid"] for r in csv.DictReader(passed.stdout.splitlines())] == [first.study_uid, last.study_uid]
    out = _cli(config_path, "export", "--format", "parquet", "--out", str(tmp_path / "cohort.parquet"))
    assert out.returncode == 0, out.stderr
    table = pq.read_table(tmp_path / "cohort.parquet").to_pylist()
    assert [r["parenchyma_left_ml"] for r in table] == [float(r["parenchyma_left_ml"]) for r in rows]

    # pseudonymised: one keyed hash per patient, no identifier left; without a key, a clear refusal
    refused = _cli(config_path, "export", "--pseudonymise")
    assert refused.returncode == 2 and "DICOMNODE_PSEUDONYM_KEY" in refused.stderr
    hidden = _cli(config_path, "export", "--pseudonymise", env={"DICOMNODE_PSEUDONYM_KEY": "k" * 32})
    assert hidden.returncode == 0 and PATIENT not in hidden.stdout and not any(s.study_uid in hidden.stdout for s in studies)
    assert {r["patient_id"] for r in csv.DictReader(hidden.stdout.splitlines())} == {pseudonym(b"k" * 32, f"\\{PATIENT}")}

    # the patient's purge removes the history, and says so in the log and the store
    gone = _cli(config_path, "purge-patient", "--patient-id", PATIENT)
    assert gone.returncode == 0 and "3 results deleted" in gone.stdout and "patient purge: 3 results deleted" in gone.stderr
    store = Store(config.path(config.database))
    assert store.history.entries() == [] and [p["results"] for p in store.history.purges()] == [3]
    store.close()
    assert "patient purge" in _cli(config_path, "status").stdout and _cli(config_path, "status", "--json").returncode == 0


def _entry(study: str, date: str, ml: float, passed: tuple[str, ...] = ("parenchyma", "cortex", "medulla"), version: str = "1") -> HistoryEntry:
    volumes = {(s, side): ml * share for s, share in (("parenchyma", 1.0), ("cortex", 0.7), ("medulla", 0.3)) for side in ("left", "right")}
    algorithms = dict.fromkeys(("parenchyma", "cortex", "medulla"), ("model", version))
    return HistoryEntry(Patient("P"), study, date, "series", volumes, passed, (), passed, algorithms, "ok")


def test_the_latest_comparable_prior_is_compared_and_newer_ones_are_named_with_why() -> None:
    current = _entry("now", "20260301", 150.0)
    priors = [
        _entry("old", "20240301", 170.0),
        _entry("other model", "20250301", 160.0, version="2"),
        _entry("failed cortex", "20251201", 155.0, passed=("parenchyma",)),
        _entry("later", "20270101", 100.0),  # dated after this study: not a prior
        _entry("now", "20260301", 150.0),  # this study itself, as an earlier version recorded it
    ]
    followup = compare(current, priors, ("parenchyma", "cortex"))
    parenchyma = followup.change("parenchyma", "left")
    assert parenchyma is not None and parenchyma.prior_study_uid == "failed cortex" and parenchyma.change_ml == pytest.approx(-5.0)
    cortex = followup.change("cortex", "right")
    assert cortex is not None and cortex.prior_study_uid == "old" and cortex.change_ml == pytest.approx(0.7 * -20)
    assert cortex.ml_per_year == pytest.approx(cortex.change_ml * 365.25 / (dt.date(2026, 3, 1) - dt.date(2024, 3, 1)).days)
    named = {(n.prior_study_uid, n.structure): n.why for n in followup.not_compared}
    assert named == {("failed cortex", "cortex"): "its QC failed (sent for review)", ("other model", "cortex"): "made by another model (model 2)"}
    assert followup.change("medulla", "left") is None  # not asked for
    assert {p.date for p in followup.points} == {dt.date(2024, 3, 1), dt.date(2025, 3, 1), dt.date(2025, 12, 1), dt.date(2026, 3, 1)}


def test_a_study_without_a_date_or_without_priors_is_not_compared() -> None:
    assert compare(_entry("now", "", 150.0), [_entry("old", "20240301", 170.0)], ("parenchyma",)).changes == ()
    assert compare(_entry("now", "20260301", 150.0), [], ("parenchyma",)).points == ()


def test_the_history_keeps_one_row_per_study_and_only_the_patients_purge_deletes_it(store: Store, tmp_path: Path) -> None:
    def finish(study: str, upto: int, entry: HistoryEntry | None) -> None:
        job = store.create_job(study, upto)
        store.start_job(job.id)
        store.finish_job(job.id, Outcome.RESULT if entry else Outcome.FAILED, [], measured=entry, verdict="v")

    finish("s1", 1, _entry("s1", "20250101", 150.0))
    finish("s1", 2, _entry("s1", "20250101", 140.0))  # the study sent again: its row is replaced, not added
    finish("s2", 3, _entry("s2", "20260101", 130.0))
    finish("s3", 4, _entry("s3", "20260101", 130.0))
    finish("s3", 5, None)  # a later version without measurements withdraws the row
    rows = store.history.of_patient(Patient("P"))
    assert [(e.study_uid, e.volumes[("parenchyma", "left")]) for e in rows] == [("s1", 140.0), ("s2", 130.0)]
    assert store.history.of_patient(Patient("P", "OTHER ISSUER")) == [] and store.history.of_patient(Patient("")) == []
    assert rows[0].recorded_at == pytest.approx(store.now(), abs=60)
    assert store.history.purge_patient(Patient("P"), "consent withdrawn") == 2
    assert store.history.entries() == [] and store.history.purges()[0]["reason"] == "consent withdrawn"


def test_the_export_writes_csv_and_parquet_with_the_same_rows(tmp_path: Path) -> None:
    entries = [_entry("s1", "20250101", 150.0), replace(_entry("s2", "20260101", 140.0), sent=())]
    assert write_table(entries, tmp_path / "t.csv", Format.CSV) == 2
    assert (tmp_path / "t.csv").read_text() == csv_text(entries)
    write_table(entries, tmp_path / "t.parquet", Format.PARQUET)
    table = pq.read_table(tmp_path / "t.parquet").to_pylist()
    assert [(r["study_uid"], r["result"], r["parenchyma_right_ml"]) for r in table] == [("s1", "sent", 150.0), ("s2", "withheld", 140.0)]
    assert json.dumps(table[0]["cortex_left_ml"]) == "105.0"


def test_the_csv_export_puts_a_quote_before_text_a_spreadsheet_would_run_and_leaves_numbers_alone() -> None:
    entry = replace(
        _entry("s1", "20250101", 150.0), patient=Patient("=1+1", "@SUM(1)"), verdict="+1", qc_findings=("-1",),
        algorithms={"parenchyma": ("\tmodel", "1"), "cortex": ("\rmodel", "1")},
    )  # fmt: skip
    entry.volumes[("parenchyma", "left")] = -3.2
    [row] = csv.DictReader(io.StringIO(csv_text([entry]), newline=""))
    quoted = {"patient_id": "'=1+1", "issuer": "'@SUM(1)", "verdict": "'+1", "qc_findings": "'-1", "model": "'\tmodel", "cortex_model": "'\rmodel"}
    assert {column: row[column] for column in quoted} == quoted  # the carriage return stays in its cell
    assert (row["parenchyma_left_ml"], row["study_uid"], row["model_version"]) == ("-3.2", "s1", "1")


def test_the_export_into_a_folder_that_does_not_exist_or_onto_a_folder_is_refused_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("database: node.sqlite\n")
    missing = _cli(config, "export", "--out", str(tmp_path / "missing" / "cohort.csv"))
    assert (missing.returncode, missing.stdout, missing.stderr) == (2, "", f"--out: folder {tmp_path / 'missing'} does not exist\n")
    assert not (tmp_path / "missing").exists()
    folder = _cli(config, "export", "--format", "parquet", "--out", str(tmp_path))
    assert (folder.returncode, folder.stderr) == (2, f"--out: {tmp_path} is a folder; name the file to write\n")
