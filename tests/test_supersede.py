"""A result the node no longer stands by is withdrawn from the PACS: what a later version of a study replaced is not
sent if it was still queued, and gets an IHE IOCM rejection note (a KOS, "Rejected for Quality Reasons") if it was
sent, before the new version's results. Finding 1 of the second adversarial run: version 1 ran on 204 of 300
slices, was delivered, and stayed in the PACS after version 2 replaced it."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from dicomnode.base.uids import ResultUids, job_seed
from dicomnode.config import NodeConfig
from dicomnode.instance import Instance
from dicomnode.node.pipeline import process_study
from dicomnode.outbound.save import save_results
from dicomnode.outbound.supersede import reject_superseded
from dicomnode.results.rejection import read_rejection_note, write_rejection_note
from dicomnode.store import Queued, Store
from dicomnode.store.states import DeliveryState, JobDelivery, Outcome
from tests.peers import NodeFactory, Orthanc, dciodvfy, storescu, tools_missing, wait_for
from tests.standins import PhantomLabels
from training.phantom_dicom import StudyFiles, write_study
from training.phantoms import Grid, Phase

GRID = Grid.centred(96, 3.5, 24, 5.0)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> StudyFiles:
    return write_study(40, tmp_path_factory.mktemp("study"), phases=(Phase.ARTERIAL,), grid=GRID)


def _instances(files: list[Path]) -> list[Instance]:
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    return [Instance(i, h.SOPInstanceUID, h.StudyInstanceUID, h.SeriesInstanceUID, h.SOPClassUID, p) for i, (h, p) in enumerate(zip(headers, files))]


def _results(study: StudyFiles, results: Path, version: int) -> list[Queued]:
    """SEG and SR of one version of the study, saved where the node keeps them, queued for "pacs" and "archive"."""
    series = study.series[0]
    processed = process_study(_instances(series.files), NodeConfig(), PhantomLabels(series), ResultUids(job_seed(study.study_uid, version)))
    assert processed.results is not None
    saved = save_results(processed.results, results / study.study_uid / f"v{version}")
    return [Queued(d, s.sop_uid, s.path) for d in ("pacs", "archive") for s in saved]


def _finish(store: Store, study: StudyFiles, upto: int, queued: list[Queued]) -> int:
    job = store.create_job(study.study_uid, upto)
    store.start_job(job.id)
    store.finish_job(job.id, Outcome.RESULT, queued, verdict="arterial series selected")
    return job.id


def test_a_later_version_supersedes_what_was_queued_and_rejects_what_was_sent(store: Store, study: StudyFiles, tmp_path: Path) -> None:
    v1 = _finish(store, study, 10, _results(study, tmp_path, 1))
    for d in store.deliveries(v1):
        if d.destination == "pacs":
            store.update_delivery(d.id, DeliveryState.SENT, 1, 0, None)  # the PACS got version 1; the archive was down
    sent_v1 = {d.sop_uid for d in store.deliveries(v1) if d.destination == "pacs"}

    v2 = _finish(store, study, 24, _results(study, tmp_path, 2))
    assert {(d.destination, d.state) for d in store.deliveries(v1)} == {("pacs", DeliveryState.SENT), ("archive", DeliveryState.SUPERSEDED)}
    assert store.job(v1).delivery is JobDelivery.SUPERSEDED
    claimed = store.claim_deliveries("a", 1e12, 60)
    assert {d.destination for d in claimed} == {"archive"}  # the PACS's results wait for the rejection note
    for d in claimed:
        store.update_delivery(d.id, DeliveryState.SENT, 1, 0, None)

    assert reject_superseded(store, tmp_path) == 1
    assert reject_superseded(store, tmp_path) == 0  # once only
    claimed = store.claim_deliveries("a", 1e12, 60)
    assert [d.destination for d in claimed] == ["pacs"] * 3
    note = read_rejection_note(pydicom.dcmread(claimed[0].path))  # the note comes first
    assert set(note.rejected) == sent_v1 and note.study_uid == study.study_uid
    assert note.title.value == "113001" and "version 2" in note.description and "version 1" in note.description
    assert dciodvfy(claimed[0].path) == []
    assert {d.sop_uid for d in claimed[1:]} == {d.sop_uid for d in store.deliveries(v2) if d.destination == "pacs" and d.sop_uid != note.sop_uid}
    assert store.rejection_notes() == {note.sop_uid}


def test_a_result_sent_while_it_was_being_superseded_is_rejected_all_the_same(store: Store, study: StudyFiles, tmp_path: Path) -> None:
    v1 = _finish(store, study, 10, _results(study, tmp_path, 1)[:2])
    in_flight = store.claim_deliveries("a", 1e12, 60)  # a sender has them on the wire...
    _finish(store, study, 24, _results(study, tmp_path, 2)[:2])  # ...when version 2 is recorded
    for d in in_flight:
        store.update_delivery(d.id, DeliveryState.SENT, 1, 0, None)
    assert {d.state for d in store.deliveries(v1)} == {DeliveryState.SENT}
    assert reject_superseded(store, tmp_path) == 1
    failed = store.claim_deliveries("a", 1e12, 60)
    store.update_delivery(failed[0].id, DeliveryState.QUEUED, 1, 1e12, "peer down")
    assert store.deliveries(v1)[0].state is DeliveryState.SENT


def test_a_rejection_note_is_never_itself_superseded_or_rejected(store: Store, study: StudyFiles, tmp_path: Path) -> None:
    v1 = _finish(store, study, 10, _results(study, tmp_path, 1)[:2])
    for d in store.deliveries(v1):
        store.update_delivery(d.id, DeliveryState.SENT, 1, 0, None)
    v2 = _finish(store, study, 20, _results(study, tmp_path, 2)[:2])
    assert reject_superseded(store, tmp_path) == 1
    [note] = [d for d in store.deliveries(v2) if d.sop_uid in store.rejection_notes()]
    _finish(store, study, 24, [])  # version 3 before the note went out: the note still goes
    assert next(d for d in store.deliveries(v2) if d.id == note.id).state is DeliveryState.QUEUED
    assert {d.state for d in store.deliveries(v2) if d.id != note.id} == {DeliveryState.SUPERSEDED}
    store.update_delivery(note.id, DeliveryState.SENT, 1, 0, None)
    assert reject_superseded(store, tmp_path) == 0


def test_the_note_names_the_rejected_objects_and_refuses_bad_arguments(study: StudyFiles, tmp_path: Path) -> None:
    datasets = [pydicom.dcmread(q.path) for q in _results(study, tmp_path, 1)[:2]]
    note = write_rejection_note(datasets, "why", ResultUids("s/v2"), "rejection/pacs/1")
    assert read_rejection_note(note).rejected == tuple(str(ds.SOPInstanceUID) for ds in datasets)
    with pytest.raises(ValueError, match="rejected"):
        write_rejection_note([], "why", ResultUids("s/v2"), "x")
    with pytest.raises(ValueError, match="dataset"):
        read_rejection_note(datasets[0])


@pytest.mark.skipif(bool(tools_missing()), reason=f"missing tools: {tools_missing()}")
def test_a_pacs_gets_a_rejection_note_for_a_result_a_later_version_replaced(tmp_path: Path, node_process: NodeFactory, orthanc: Orthanc) -> None:
    """storescu sends the arterial series and releases; the quiet period passes and version 1 reaches Orthanc. A
    late series of the study comes: version 2 runs, and Orthanc receives a rejection note for version 1's SEG and SR
    before version 2's."""
    study = write_study(41, tmp_path / "study", phases=(Phase.ARTERIAL, Phase.NONCONTRAST), grid=GRID)
    orthanc.start()
    pacs = [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}]
    node = node_process(tmp_path / "node", pacs, model_name="renal-phantom-cpu")
    node.start()
    assert storescu(node.port, node.ae_title, study.series[0].files).returncode == 0
    first = wait_for(lambda: _results_in(orthanc), 180, 1.0, "version 1 in Orthanc")
    version_1 = {orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in first}
    assert storescu(node.port, node.ae_title, study.series[1].files).returncode == 0
    [kos] = wait_for(lambda: orthanc.instances_of_modality("KO"), 180, 1.0, "the rejection note in Orthanc")
    wait_for(lambda: len(orthanc.instances_of_modality("SR")) == 2, 120, 1.0, "version 2's SR in Orthanc")
    note_path = orthanc.download(kos, tmp_path / "kos.dcm")
    assert dciodvfy(note_path) == []
    note = read_rejection_note(pydicom.dcmread(note_path))
    assert set(note.rejected) == version_1 and len(version_1) == 2 and note.study_uid == study.study_uid
    arrived = [c["ID"] for c in orthanc.get("/changes?limit=1000")["Changes"] if c["ChangeType"] == "NewInstance"]
    later = [i for i in orthanc.instances_of_modality("SR") if i not in first]
    assert arrived.index(kos) < arrived.index(later[0])  # the note before the new version
    jobs = node.jobs()
    assert [(j["version"], j["delivery"]) for j in jobs] == [(1, "delivered"), (2, "delivered")]


def _results_in(orthanc: Orthanc) -> list[str]:
    segs, srs = orthanc.instances_of_modality("SEG"), orthanc.instances_of_modality("SR")
    return [*segs, *srs] if segs and srs else []


def test_a_later_version_that_withholds_rejects_what_the_earlier_one_sent(store: Store, study: StudyFiles, tmp_path: Path) -> None:
    v1 = _finish(store, study, 10, _results(study, tmp_path, 1)[:2])
    for d in store.deliveries(v1):
        store.update_delivery(d.id, DeliveryState.SENT, 1, 0, None)
    job = store.create_job(study.study_uid, 24)
    store.start_job(job.id)
    store.finish_job(job.id, Outcome.NO_RESULT, [], verdict="QC failed: volumes withheld")
    assert reject_superseded(store, tmp_path) == 1
    [note] = store.deliveries(job.id)
    assert set(read_rejection_note(pydicom.dcmread(note.path)).rejected) == {d.sop_uid for d in store.deliveries(v1)}
    assert store.job(job.id).delivery is JobDelivery.SENDING
