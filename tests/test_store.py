"""The store's contract, run on SQLite and on a real PostgreSQL server: a job's processing state, outcome and delivery
progress each move in one place, only along allowed transitions; workers claim jobs under leases, and a finish
after the lease expired is refused with nothing recorded; results of a run cut off before it was recorded are
removed at start; old databases are upgraded on both; every timestamp is the database's clock."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from dicomnode.node.service import remove_unrecorded_results
from dicomnode.store import LeaseLost, Queued, Store
from dicomnode.store.database import SQLITE, Database, SqliteDatabase
from dicomnode.store.states import DeliveryState, JobDelivery, JobState, Outcome


def _result(results: Path, study: str, version: int, name: str = "SEG_1.2.3.dcm") -> Path:
    path = results / study / f"v{version}" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"DICM")
    return path


def test_a_job_moves_pending_running_done_and_its_delivery_follows_its_files(store: Store, tmp_path: Path) -> None:
    job = store.create_job("1.2.1", 10)
    assert (job.state, job.outcome, job.delivery) == (JobState.PENDING, None, JobDelivery.NONE)
    store.start_job(job.id)
    seg, sr = _result(tmp_path, "1.2.1", 1), _result(tmp_path, "1.2.1", 1, "SR_1.2.4.dcm")
    store.finish_job(
        job.id, Outcome.RESULT, [Queued(d, uid, p) for d in ("pacs", "archive") for uid, p in (("1.2.3", seg), ("1.2.4", sr))], verdict="ok", reasons=["why"]
    )
    job = store.job(job.id)
    assert (job.state, job.outcome, job.delivery, job.verdict, job.reasons) == (JobState.DONE, Outcome.RESULT, JobDelivery.SENDING, "ok", ["why"])
    deliveries = store.deliveries(job.id)
    assert len(deliveries) == 4 and {d.state for d in deliveries} == {DeliveryState.QUEUED}
    for d in deliveries[:3]:
        store.update_delivery(d.id, DeliveryState.SENT, 1, 0, None)
    assert store.job(job.id).delivery is JobDelivery.SENDING  # one file still queued
    store.update_delivery(deliveries[3].id, DeliveryState.DEAD, 8, 0, "peer down")
    assert store.job(job.id).delivery is JobDelivery.FAILED
    assert store.requeue_dead() == 1 and store.job(job.id).delivery is JobDelivery.SENDING
    store.update_delivery(deliveries[3].id, DeliveryState.SENT, 1, 0, None)
    assert store.job(job.id).delivery is JobDelivery.DELIVERED
    assert store.jobs(JobState.DONE, JobDelivery.DELIVERED) == [store.job(job.id)]


@pytest.mark.parametrize("job_id", [7, 2**63, -(2**63) - 1, 10**30])
def test_an_unknown_job_or_one_beyond_64_bit_ids_is_named_as_no_job(store: Store, job_id: int) -> None:
    with pytest.raises(ValueError, match=f"no job {job_id}$"):
        store.job(job_id)


def test_a_job_without_result_files_has_nothing_to_deliver_and_keeps_its_outcome(store: Store) -> None:
    job = store.create_job("1.2.1", 10)
    store.start_job(job.id)
    store.finish_job(job.id, Outcome.NO_RESULT, [], verdict="no arterial series", reasons=[])
    assert (store.job(job.id).outcome, store.job(job.id).delivery) == (Outcome.NO_RESULT, JobDelivery.NONE)


def test_transitions_out_of_order_are_refused_naming_the_job(store: Store) -> None:
    job = store.create_job("1.2.1", 10)
    with pytest.raises(ValueError, match=f"job {job.id} is not running"):
        store.finish_job(job.id, Outcome.RESULT, [], verdict="ok", reasons=[])
    store.start_job(job.id)
    with pytest.raises(ValueError, match=f"job {job.id} is not pending"):
        store.start_job(job.id)
    store.finish_job(job.id, Outcome.FAILED, [], verdict="processing failed", reasons=[], error="boom")
    with pytest.raises(ValueError, match="is not running"):
        store.finish_job(job.id, Outcome.RESULT, [], verdict="ok", reasons=[])
    assert store.job(job.id).outcome is Outcome.FAILED  # the refused finish changed nothing


def test_a_job_cut_off_while_running_goes_back_to_pending(store: Store) -> None:
    running, pending = store.create_job("1.2.1", 10), store.create_job("1.2.2", 20)
    store.start_job(running.id)
    assert [j.id for j in store.requeue_interrupted()] == [running.id]
    assert [j.state for j in store.jobs()] == [JobState.PENDING, JobState.PENDING] and pending.state is JobState.PENDING


def test_a_duplicate_instance_is_indexed_once_and_new_instances_make_a_study_ready(store: Store, tmp_path: Path) -> None:
    assert store.add_instance("1.2.3.1", "1.2.3", "1.2.3.9", "1.2.840.10008.5.1.4.1.1.2", tmp_path / "a.dcm", "SCU")
    assert not store.add_instance("1.2.3.1", "1.2.3", "1.2.3.9", "1.2.840.10008.5.1.4.1.1.2", tmp_path / "a.dcm", "SCU")
    [row] = store.studies_with_new_instances()
    store.create_job("1.2.3", row["max_seq"])
    assert store.studies_with_new_instances() == []
    store.add_instance("1.2.3.2", "1.2.3", "1.2.3.9", "1.2.840.10008.5.1.4.1.1.2", tmp_path / "b.dcm", "SCU")
    assert [r["study_uid"] for r in store.studies_with_new_instances()] == ["1.2.3"]
    assert store.create_job("1.2.3", 2).version == 2


def test_unrecorded_results_are_removed_and_recorded_ones_kept(store: Store, tmp_path: Path) -> None:
    results = tmp_path / "results"
    recorded = store.create_job("1.2.1", 10)
    sent = _result(results, "1.2.1", recorded.version)
    store.start_job(recorded.id)
    store.finish_job(recorded.id, Outcome.RESULT, [Queued("pacs", "1.2.3", sent)], verdict="ok", reasons=[])
    killed = store.create_job("1.2.2", 20)
    store.start_job(killed.id)
    orphan = _result(results, "1.2.2", killed.version)  # SEG written, then kill -9 before the job was finished
    stray = _result(results, "1.2.9", 1)  # no job at all
    removed = remove_unrecorded_results(results, store.jobs())
    assert sorted(removed) == sorted([orphan.parent, stray.parent])
    assert sent.exists() and not orphan.exists() and not stray.exists()
    assert remove_unrecorded_results(results, store.jobs()) == []


def test_a_database_from_when_one_state_held_outcome_and_delivery_is_upgraded(database: Database) -> None:
    database.script(
        "CREATE TABLE jobs (id {id}, study_uid TEXT NOT NULL, version INTEGER NOT NULL,"
        " upto_seq BIGINT NOT NULL, state TEXT NOT NULL, series_uid TEXT, verdict TEXT, reasons TEXT NOT NULL DEFAULT '[]',"
        " error TEXT, measurements TEXT, timings TEXT NOT NULL DEFAULT '{{}}', created_at {real} NOT NULL, updated_at {real} NOT NULL);"
        "CREATE TABLE deliveries (id {id}, job_id BIGINT NOT NULL, destination TEXT NOT NULL,"
        " path TEXT NOT NULL, sop_uid TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
        " next_attempt_at {real} NOT NULL, last_error TEXT, updated_at {real} NOT NULL, UNIQUE (job_id, destination, sop_uid))"
    )
    for n, state in enumerate(["done", "no_result", "failed", "delivery_failed", "running"], 1):
        database.execute("INSERT INTO jobs (study_uid, version, upto_seq, state, created_at, updated_at) VALUES (?, 1, 5, ?, 0, 0)", (f"1.2.{n}", state))
    for job, sop, state in ((1, "1.9", "sent"), (4, "1.8", "dead")):
        database.execute(
            "INSERT INTO deliveries (job_id, destination, path, sop_uid, state, next_attempt_at, updated_at) VALUES (?, 'pacs', 'a', ?, ?, 0, 0)",
            (job, sop, state),
        )
    store = Store(database)
    assert [(j.state, j.outcome, j.delivery) for j in store.jobs()] == [
        (JobState.DONE, Outcome.RESULT, JobDelivery.DELIVERED),
        (JobState.DONE, Outcome.NO_RESULT, JobDelivery.NONE),
        (JobState.DONE, Outcome.FAILED, JobDelivery.NONE),
        (JobState.DONE, Outcome.RESULT, JobDelivery.FAILED),
        (JobState.RUNNING, None, JobDelivery.NONE),
    ]
    assert store.claim_job("worker", 60) is None  # the lease columns exist; the running job stays with its runner
    assert store.requeue_interrupted()[0].study_uid == "1.2.5" and store.claim_job("worker", 60) is not None
    Store(database)  # opening an upgraded database again changes nothing
    assert [j.outcome for j in store.jobs()][:4] == [Outcome.RESULT, Outcome.NO_RESULT, Outcome.FAILED, Outcome.RESULT]


class _ClockAhead(SqliteDatabase):
    """An SQLite database whose clock runs an hour ahead of this machine's, as a cluster's database server may."""

    dialect = replace(SQLITE, now=f"({SQLITE.now} + 3600.0)")


def test_every_timestamp_the_store_writes_is_the_databases_clock(tmp_path: Path) -> None:
    store = Store(_ClockAhead(tmp_path / "node.sqlite"))
    store.add_instance("1.2.3.1", "1.2.3", "1.2.3.9", "1.2.840.10008.5.1.4.1.1.2", tmp_path / "a.dcm", "SCU")
    store.add_refusal("SCU", "1.2.4", "1.2.4.1", "not CT")
    store.set_waiting({"1.2.5": "quiet period"})
    job = store.create_job("1.2.3", 1)
    store.start_job(job.id)
    store.finish_job(job.id, Outcome.RESULT, [Queued("pacs", "9.9", tmp_path / "SR.dcm")], verdict="v")
    [delivery] = store.deliveries(job.id)
    store.update_delivery(delivery.id, DeliveryState.SENT, 1, store.now(), None)
    [study] = store.finished_studies()
    assert store.purge_study(study, "test", lambda paths, versions: None) == 1
    stamps = {
        f"{table}.{column}": store.db.query(f"SELECT {column} AS t FROM {table}")[0]["t"]
        for table, column in (("refusals", "received_at"), ("waiting", "updated_at"), ("jobs", "created_at"), ("jobs", "updated_at"))
        + (("deliveries", "next_attempt_at"), ("deliveries", "updated_at"), ("purges", "purged_at"))
    }
    assert {k: abs(v - store.now()) < 60 for k, v in stamps.items()} == dict.fromkeys(stamps, True), stamps
    assert abs(store.now() - time.time() - 3600) < 5
    # what retention compares its age with: the study's last activity, on the same clock
    assert study.last_activity > time.time() + 3000
    store.close()


def test_workers_claim_each_pending_job_once_even_when_claiming_at_the_same_time(store: Store) -> None:
    made = [store.create_job(f"1.2.{n}", n + 1).id for n in range(12)]
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (job := store.claim_job(name, lease_s=60)) is not None:
            assert job.state is JobState.RUNNING
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker, args=(f"gpu{k}",)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(claimed) == made  # every job once, none twice
    assert store.claim_job("gpu9", lease_s=60) is None


def test_a_finish_after_the_lease_expired_is_refused_and_the_job_is_done_once(store: Store, tmp_path: Path) -> None:
    job = store.create_job("1.2.1", 10)
    assert store.claim_job("stalled", lease_s=0.3) is not None
    assert store.renew_lease(job.id, "stalled", lease_s=0.3)  # its heartbeat, while alive
    time.sleep(0.6)  # then it stops (SIGSTOP, a long GC pause, a cut network)
    assert not store.renew_lease(job.id, "stalled", lease_s=0.3)
    assert store.reap_expired() == [job.id] and store.job(job.id).state is JobState.PENDING
    taken = store.claim_job("healthy", lease_s=60)
    assert taken is not None and taken.id == job.id
    late = [Queued("pacs", "9.1", tmp_path / "SEG_late.dcm")]
    with pytest.raises(LeaseLost, match=f"job {job.id} is no longer leased to stalled"):
        store.finish_job(job.id, Outcome.RESULT, late, worker="stalled", verdict="late", reasons=[])
    assert store.deliveries(job.id) == [] and store.job(job.id).state is JobState.RUNNING  # nothing recorded
    store.finish_job(job.id, Outcome.RESULT, [Queued("pacs", "9.2", tmp_path / "SEG.dcm")], worker="healthy", verdict="ok", reasons=[])
    done = store.job(job.id)
    assert (done.state, done.verdict, [d.sop_uid for d in store.deliveries(job.id)]) == (JobState.DONE, "ok", ["9.2"])
    assert store.reap_expired() == []


def test_instances_are_stamped_with_the_databases_clock(store: Store, tmp_path: Path) -> None:
    before = store.now()
    store.add_instance("1.2.3.1", "1.2.3", "1.2.3.9", "1.2.840.10008.5.1.4.1.1.2", tmp_path / "a.dcm", "SCU")
    [row] = store.studies_with_new_instances()
    assert before <= row["last_received_at"] <= store.now()
    assert abs(store.now() - time.time()) < 5  # the same machine here; in a cluster, one clock for all


def test_senders_claim_due_deliveries_so_that_none_is_tried_twice_at_once(store: Store, tmp_path: Path) -> None:
    job = store.create_job("1.2.1", 10)
    store.start_job(job.id)
    store.finish_job(
        job.id, Outcome.RESULT, [Queued(d, f"9.{n}", tmp_path / f"{n}.dcm") for d in ("pacs", "archive") for n in range(5)], verdict="ok", reasons=[]
    )
    now = time.time() + 1
    first = store.claim_deliveries("tx1", now, lease_s=0.5)
    assert len(first) == 10 and store.claim_deliveries("tx2", now, lease_s=0.5) == []  # all held by tx1
    store.update_delivery(first[0].id, DeliveryState.QUEUED, 1, now, "peer down")  # an attempt ends the claim
    assert [d.id for d in store.claim_deliveries("tx2", now, lease_s=60)] == [first[0].id]
    time.sleep(0.7)  # tx1 died holding the rest: its claims run out
    assert len(store.claim_deliveries("tx2", now, lease_s=60)) == 9
    assert store.release_delivery_claims() == 10  # the embedded node restarting after a kill
    assert len(store.claim_deliveries("tx3", now, lease_s=60)) == 10
