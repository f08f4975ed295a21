"""Completion: quiet period after the association's release, or force-complete when a sender keeps it open."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from dicomnode.intake.complete import ready_studies
from dicomnode.store import Store
from tests.peers import NodeFactory, storescu, wait_for
from training.phantom_dicom import write_study
from training.phantoms import Grid, Phase


def test_waits_for_release_then_forces_completion(tmp_path: Path) -> None:
    store = Store(tmp_path / "node.sqlite")
    store.add_instance("1.2.3.1", "1.2.3", "1.2.3.9", str(CTImageStorage), tmp_path / "a.dcm", "SCU")
    received = store.studies_with_new_instances()[0]["last_received_at"]
    open_since = {"1.2.3": received - 1.0}
    soon = ready_studies(store, open_since, quiet_period_s=2, max_wait_s=60, now=received + 5)
    assert soon.ready == [] and soon.waiting["1.2.3"].startswith("waiting for association release since")
    assert soon.due_in_s == pytest.approx(55)  # forced complete at max_wait_s
    late = ready_studies(store, open_since, quiet_period_s=2, max_wait_s=60, now=received + 61)
    assert [r.study_uid for r in late.ready] == ["1.2.3"] and late.waiting == {}
    released = ready_studies(store, {}, quiet_period_s=2, max_wait_s=60, now=received + 1)
    assert released.ready == [] and released.waiting["1.2.3"].startswith("quiet period")
    assert released.due_in_s == pytest.approx(1)  # the quiet period ends in a second: checked again then
    done = ready_studies(store, {}, 2, 60, now=received + 3)
    assert [r.study_uid for r in done.ready] == ["1.2.3"] and done.due_in_s is None
    store.close()


def test_a_router_that_keeps_its_association_open_with_echoes_gets_its_study_processed(tmp_path: Path, node_process: NodeFactory) -> None:
    study = write_study(91, tmp_path / "study", phases=(Phase.NONCONTRAST,), grid=Grid.centred(32, 10.0, 4, 5.0))
    node = node_process(tmp_path / "node", [], extra={"max_wait_s": 6})
    node.start()
    ae = AE(ae_title="ROUTER")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, pydicom.uid.ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    try:
        for path in study.series[0].files:
            assert int(assoc.send_c_store(pydicom.dcmread(path)).Status) == 0
        sent = time.monotonic()
        wait_for(lambda: "waiting for association release since" in node.cli("status").stdout, 20, 0.5, "status to say why")
        while not node.jobs():  # C-ECHO every second keeps the association busy, as some routers do
            assert int(assoc.send_c_echo().Status) == 0
            assert time.monotonic() - sent < 30, "the study was never completed"
            time.sleep(1.0)
        assert time.monotonic() - sent >= 6  # not before max_wait_s
        assert assoc.is_established
        assert "processed (max_wait_s)" in node.log()
    finally:
        assoc.release()


def test_an_interrupted_study_waits_for_max_wait_until_a_release_settles_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "node.sqlite")
    store.receiver_alive("r1")
    store.add_instance("1.2.3.1", "1.2.3", "1.2.3.9", str(CTImageStorage), tmp_path / "a.dcm", "SCU")
    store.association_sent("r1", "7", "1.2.3")
    store.association_closed("r1", "7", released=False)  # the sender aborted after part of the series
    interrupted = store.interrupted_studies()
    assert list(interrupted) == ["1.2.3"] and "without release" in interrupted["1.2.3"]
    received = store.studies_with_new_instances()[0]["last_received_at"]
    quiet = ready_studies(store, {}, quiet_period_s=2, max_wait_s=60, now=received + 5, interrupted=interrupted)
    assert quiet.ready == [] and "it may be partial" in quiet.waiting["1.2.3"]
    late = ready_studies(store, {}, quiet_period_s=2, max_wait_s=60, now=received + 61, interrupted=interrupted)
    assert [r.study_uid for r in late.ready] == ["1.2.3"]
    store.association_sent("r1", "8", "1.2.3")  # the sender comes back and releases: the study is whole again
    store.association_closed("r1", "8", released=True)
    assert store.interrupted_studies() == {}
    store.association_sent("r1", "9", "1.2.3")
    store.forget_associations("r1")  # the node restarted while an association was sending
    assert "the node stopped" in store.interrupted_studies()["1.2.3"]
    store.create_jobs([("1.2.3", 1)])
    assert store.interrupted_studies() == {}  # a job covers it now
    store.close()


def test_a_series_cut_off_by_an_abort_is_not_processed_after_the_quiet_period(tmp_path: Path, node_process: NodeFactory) -> None:
    """Finding 1 of the second adversarial run: part of a series, an abort, the quiet period passes: version 1
    ran on the part and was delivered. Now the study waits max_wait_s, and the rest sent meanwhile joins it."""
    study = write_study(92, tmp_path / "study", phases=(Phase.NONCONTRAST,), grid=Grid.centred(32, 10.0, 8, 5.0))
    files = study.series[0].files
    node = node_process(tmp_path / "node", [], extra={"quiet_period_s": 1, "max_wait_s": 20})
    node.start()
    assert storescu(node.port, node.ae_title, files[:4], extra=("--abort",)).returncode == 0
    wait_for(lambda: "may be partial" in node.cli("status").stdout, 20, 0.5, "status to say the study may be partial")
    time.sleep(3)  # three quiet periods
    assert node.jobs() == []
    assert storescu(node.port, node.ae_title, files[4:]).returncode == 0  # the rest, released
    wait_for(lambda: [j["state"] for j in node.jobs()] == ["done"], 60, 0.5, "one job for the whole series")
    assert len(node.jobs()) == 1 and node.jobs()[0]["upto_seq"] == len(files)
