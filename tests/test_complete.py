"""Completion: quiet period after the association's release, or force-complete when a sender keeps it open."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from dicomnode.complete import ready_studies
from dicomnode.store import Store
from tests.peers import NodeFactory, wait_for
from training.phantom_dicom import write_study
from training.phantoms import Grid, Phase


def test_waits_for_release_then_forces_completion(tmp_path: Path) -> None:
    store = Store(tmp_path / "node.sqlite")
    store.add_instance("1.2.3.1", "1.2.3", "1.2.3.9", str(CTImageStorage), tmp_path / "a.dcm", "SCU")
    received = store.studies_with_new_instances()[0]["last_received_at"]
    open_since = {"1.2.3": received - 1.0}
    soon = ready_studies(store, open_since, quiet_period_s=2, max_wait_s=60, now=received + 5)
    assert soon.ready == [] and soon.waiting["1.2.3"].startswith("waiting for association release since")
    late = ready_studies(store, open_since, quiet_period_s=2, max_wait_s=60, now=received + 61)
    assert [r.study_uid for r in late.ready] == ["1.2.3"] and late.waiting == {}
    released = ready_studies(store, {}, quiet_period_s=2, max_wait_s=60, now=received + 1)
    assert released.ready == [] and released.waiting["1.2.3"].startswith("quiet period")
    assert [r.study_uid for r in ready_studies(store, {}, 2, 60, now=received + 3).ready] == ["1.2.3"]
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
