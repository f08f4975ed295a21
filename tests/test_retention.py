"""Retention deletes a finished study's instances and results by age and under disk pressure, oldest first, and never
a study with a job not done, a delivery queued or parked, instances not yet processed, or an open association."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from dicomnode.config import NodeConfig, Retention, messages
from dicomnode.node.retention import clean
from dicomnode.store import Queued, Store
from dicomnode.store.states import DeliveryState, Outcome

CT = "1.2.840.10008.5.1.4.1.1.2"
DAY = 86400.0


class Site:
    """A store with studies on disk, each in a chosen state."""

    def __init__(self, root: Path, store: Store) -> None:
        self.storage, self.results = root / "storage", root / "results"
        self.store = store

    def study(self, uid: str, delivered: str | None = "sent", instances: int = 3) -> list[Path]:
        """Receive ``instances``, then run a job whose results' delivery ends ``delivered`` (None: job still pending)."""
        paths = []
        for n in range(instances):
            path = self.storage / uid / f"{uid}.1" / f"{uid}.1.{n}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"DICM")
            self.store.add_instance(f"{uid}.1.{n}", uid, f"{uid}.1", CT, path, "SCU")
            paths.append(path)
        [row] = [r for r in self.store.studies_with_new_instances() if r["study_uid"] == uid]
        job = self.store.create_job(uid, row["max_seq"])
        if delivered is None:
            return paths
        self.store.start_job(job.id)
        seg = self.results / uid / f"v{job.version}" / "SEG_9.dcm"
        seg.parent.mkdir(parents=True)
        seg.write_bytes(b"DICM")
        self.store.finish_job(job.id, Outcome.RESULT, [Queued("pacs", "9", seg)], verdict="ok", reasons=[])
        if delivered != "queued":
            [d] = self.store.deliveries(job.id)
            self.store.update_delivery(d.id, DeliveryState(delivered), 1, 0, None if delivered == "sent" else "peer down")
        return [*paths, seg]

    def clean(self, policy: Retention, now: float, free_mb: float = 10**6, busy: set[str] | None = None) -> list[str]:
        return [p.study_uid for p in clean(self.store, self.storage, self.results, policy, busy or set(), now, lambda _: free_mb)]


@pytest.fixture
def site(tmp_path: Path, store: Store) -> Site:
    """On SQLite and on PostgreSQL (the ``store`` fixture)."""
    return Site(tmp_path, store)


def test_delivered_studies_older_than_the_retention_are_deleted_with_their_results(site: Site) -> None:
    old = site.study("1.2.1")
    later = time.time() + 31 * DAY
    assert site.clean(Retention(days=30), now=time.time()) == []  # young: kept
    assert all(p.exists() for p in old)
    assert site.clean(Retention(days=30), now=later) == ["1.2.1"]
    assert not any(p.exists() for p in old)
    assert not (site.storage / "1.2.1").exists() and not (site.results / "1.2.1").exists()
    assert site.store.study_instances("1.2.1", 10**9) == [] and site.store.purges()[0]["instances"] == 3
    assert site.clean(Retention(days=30), now=later) == []  # nothing twice


def test_undelivered_unprocessed_and_open_studies_are_never_deleted(site: Site) -> None:
    kept = {
        "1.2.2": site.study("1.2.2", delivered="queued"),  # a delivery still queued
        "1.2.3": site.study("1.2.3", delivered="dead"),  # parked: waits for an operator's retry
        "1.2.4": site.study("1.2.4", delivered=None),  # job not run yet
    }
    site.study("1.2.5")
    site.store.add_instance("1.2.5.2.1", "1.2.5", "1.2.5.2", CT, site.storage / "x.dcm", "SCU")  # came after the job
    site.study("1.2.6")
    far = time.time() + 1000 * DAY
    assert site.clean(Retention(days=1), now=far, free_mb=0, busy={"1.2.6"}) == []
    assert all(p.exists() for paths in kept.values() for p in paths)
    assert site.clean(Retention(days=1), now=far, free_mb=0) == ["1.2.6"]


def test_under_disk_pressure_the_least_recently_active_delivered_studies_go_first(site: Site) -> None:
    for uid in ("1.2.7", "1.2.8", "1.2.9"):
        site.study(uid)
        time.sleep(0.01)
    now = time.time()
    assert site.clean(Retention(days=0, free_disk_mb=100), now=now, free_mb=500) == []  # enough space, no age limit
    freed = iter([50, 50, 150])  # free space seen before each candidate: two deletions bring it above the limit
    purged = clean(site.store, site.storage, site.results, Retention(days=0, free_disk_mb=100), set(), now, lambda _: next(freed))
    assert [p.study_uid for p in purged] == ["1.2.7", "1.2.8"]
    assert all("disk pressure" in p.reason for p in purged)


def test_the_cleaner_frees_space_before_c_store_would_be_refused() -> None:
    with pytest.raises(ValidationError) as raised:
        NodeConfig(min_free_disk_mb=500, retention=Retention(free_disk_mb=400))
    assert messages(raised.value) == ["retention.free_disk_mb: 400 must be above min_free_disk_mb=500, so that studies are deleted before C-STORE is refused"]
    with pytest.raises(ValidationError) as raised:
        Retention(days=-1)
    assert messages(raised.value) == ["days: must not be negative, got -1.0"]
