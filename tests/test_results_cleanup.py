"""Result files of a run killed before its outcome was recorded are removed at start; recorded ones stay."""

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
