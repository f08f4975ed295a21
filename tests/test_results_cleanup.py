"""Result files of a run killed before its outcome was recorded are removed at start; recorded ones stay; the
outcome of a job is kept apart from the state of its deliveries."""

from __future__ import annotations

from pathlib import Path

from dicomnode.service import remove_unrecorded_results
from dicomnode.store import RUNNING, Store


def _result(results: Path, study: str, version: int) -> Path:
    path = results / study / f"v{version}" / "SEG_1.2.3.dcm"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"DICM")
    return path


def test_unrecorded_results_are_removed_and_recorded_ones_kept(tmp_path: Path) -> None:
    store = Store(tmp_path / "node.sqlite")
    results = tmp_path / "results"
    recorded = store.create_job("1.2.1", 10)
    sent = _result(results, "1.2.1", recorded.version)
    store.finish_job_with_results(recorded.id, [("1.2.3", sent)], ["pacs"], state="done", verdict="ok", reasons=[])
    killed = store.create_job("1.2.2", 20)
    store.update_job(killed.id, state=RUNNING)
    orphan = _result(results, "1.2.2", killed.version)  # SEG written, then kill -9 before the job was finished
    stray = _result(results, "1.2.9", 1)  # no job at all
    removed = remove_unrecorded_results(results, store.jobs())
    assert sorted(removed) == sorted([orphan.parent, stray.parent])
    assert sent.exists() and not orphan.exists() and not stray.exists()
    assert remove_unrecorded_results(results, store.jobs()) == []
    store.close()


def test_outcome_is_kept_apart_from_the_delivery_state(tmp_path: Path) -> None:
    store = Store(tmp_path / "node.sqlite")
    job = store.create_job("1.2.1", 10)
    text_sr = _result(tmp_path / "results", "1.2.1", job.version)
    store.finish_job_with_results(job.id, [("1.2.3", text_sr)], ["pacs"], state="no_result", verdict="QC failed: volumes withheld", reasons=[])
    assert (store.jobs()[0].state, store.jobs()[0].outcome) == ("sending", "no_result")
    store.update_job(job.id, state="done")  # the text SR was delivered
    assert (store.jobs()[0].state, store.jobs()[0].outcome) == ("done", "no_result")
    store.close()


def test_a_database_from_before_the_outcome_column_is_upgraded(tmp_path: Path) -> None:
    import sqlite3

    old = sqlite3.connect(tmp_path / "node.sqlite")
    old.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, study_uid TEXT NOT NULL, version INTEGER NOT NULL,"
                " upto_seq INTEGER NOT NULL, state TEXT NOT NULL, series_uid TEXT, verdict TEXT, reasons TEXT NOT NULL DEFAULT '[]',"
                " error TEXT, measurements TEXT, timings TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL, updated_at REAL NOT NULL)")
    old.execute("INSERT INTO jobs (study_uid, version, upto_seq, state, created_at, updated_at) VALUES ('1.2', 1, 5, 'done', 0, 0)")
    old.commit()
    old.close()
    store = Store(tmp_path / "node.sqlite")
    assert [(j.state, j.outcome) for j in store.jobs()] == [("done", None)]
    store.close()
