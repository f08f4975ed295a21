"""What the store keeps of a reader's correction, on SQLite and PostgreSQL: its SEG never starts a model run, its job
replaces an earlier correction of the study and, only where the site says so, the model's results; a correction of a
study whose result is about to change is refused; the history keeps the node's and the reader's rows, and follow-up
compares a later study with the reader's volumes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dicomnode.analysis.followup import compare
from dicomnode.measured import HistoryEntry, Patient, Source
from dicomnode.store import Job, NewCorrection, Queued, Store, StudyBusy
from dicomnode.store.states import DeliveryState, JobKind, Outcome

STUDY, SERIES = "1.2.3.4", "1.2.3.4.5"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
PATIENT = Patient("P1")


def _model_run(store: Store, sent: bool = True) -> Job:
    for n in range(3):
        store.add_instance(f"1.2.3.4.5.{n}", STUDY, SERIES, "1.2.840.10008.5.1.4.1.1.2", Path(f"/ct{n}.dcm"), "CT")
    [row] = store.studies_with_new_instances()
    [job] = store.create_jobs([(STUDY, row["max_seq"])])
    store.start_job(job.id)
    entry = _entry(Source.NODE, 120.0, ("renal-synth3-cpu", "1"))
    store.finish_job(job.id, Outcome.RESULT, [Queued("pacs", "9.1", Path("/sr1.dcm"))], measured=entry, series_uid=SERIES, measurements={"left": 1})
    if sent:
        [delivery] = store.deliveries(job.id)
        store.update_delivery(delivery.id, DeliveryState.SENT, 1, 0, None)
    return store.job(job.id)


def _entry(source: Source, left_ml: float, made_by: tuple[str, str] | None, study: str = STUDY, date: str = "20260101") -> HistoryEntry:
    return HistoryEntry(
        patient=PATIENT,
        study_uid=study,
        study_date=date,
        series_uid=SERIES,
        volumes={("parenchyma", "left"): left_ml, ("parenchyma", "right"): 150.0},
        qc_passed=("parenchyma",),
        qc_findings=(),
        sent=("parenchyma",),
        algorithms={"parenchyma": made_by} if made_by else {},
        verdict="",
        source=source,
    )


def _new(n: int, corrects: Job) -> NewCorrection:
    return NewCorrection(f"8.{n}", STUDY, f"8.{n}.0", SEG_CLASS, Path(f"/seg{n}.dcm"), "VIEWER", corrects, "Reader^Renal", "20260102", PATIENT)


def _correct(store: Store, corrects: Job, n: int, left_ml: float, sent: bool = True, outcome: Outcome = Outcome.RESULT) -> Job:
    job = store.add_correction(_new(n, corrects))
    assert job is not None and job.kind is JobKind.CORRECTION
    store.start_job(job.id)
    if outcome is not Outcome.RESULT:
        store.finish_job(job.id, outcome, [], error="SeriesError: no instance of series 1.2.3.4.5 is stored any more")
        return store.job(job.id)
    store.finish_job(job.id, Outcome.RESULT, [Queued("pacs", f"7.{n}", Path(f"/corrected{n}.dcm"))], measured=_entry(Source.READER, left_ml, None))
    if sent:
        [delivery] = store.deliveries(job.id)
        store.update_delivery(delivery.id, DeliveryState.SENT, 1, 0, None)
    return store.job(job.id)


def test_a_correction_starts_no_model_run_and_replaces_only_an_earlier_correction(store: Store) -> None:
    model = _model_run(store)
    assert store.corrected_job(STUDY) == model
    first = _correct(store, model, 1, 110.0)
    assert (first.version, first.upto_seq) == (2, 4) and store.correction_of(first.id).corrects_job == model.id
    assert store.studies_with_new_instances() == []  # the SEG is covered by its own job
    assert store.superseded_sent() == []  # the model's SR stays in the PACS
    assert store.add_correction(_new(1, model)) is None  # sent twice
    failed = _correct(store, model, 2, 0.0, outcome=Outcome.FAILED)
    assert store.superseded_sent() == []  # a correction not taken replaces nothing ...
    assert [e.volumes[("parenchyma", "left")] for e in store.history.both_of_study(STUDY)] == [120.0, 110.0]  # ... and keeps the reader's row
    assert failed.outcome is Outcome.FAILED
    second = _correct(store, model, 3, 112.0)
    [replaced] = store.superseded_sent()
    assert (replaced.delivery.sop_uid, replaced.by_job, replaced.by_kind) == ("7.1", second.id, JobKind.CORRECTION)
    assert store.corrected_job(STUDY) == model  # a correction is never itself corrected


def test_where_the_site_withdraws_them_a_correction_rejects_the_models_results_from_then_on(database) -> None:
    model = _model_run(Store(database))
    _correct(Store(database), model, 1, 110.0)  # taken while the model's results stayed
    store = Store(database, withdraw_by_correction=True)
    assert store.superseded_sent() == []  # turning the setting on rejects nothing of earlier corrections
    queued = _correct(store, model, 2, 108.0, sent=False)
    assert [d.sop_uid for d in store.claim_deliveries("s", 1e12, 60)] == []  # waits for the notes of what it replaces
    assert sorted((r.delivery.sop_uid, r.by_job) for r in store.superseded_sent()) == [("7.1", queued.id), ("9.1", queued.id)]


def test_a_correction_of_a_study_about_to_change_is_refused(store: Store) -> None:
    model = _model_run(store)
    store.add_instance("1.2.3.4.5.99", STUDY, SERIES, "1.2.840.10008.5.1.4.1.1.2", Path("/late.dcm"), "CT")  # a late slice
    with pytest.raises(StudyBusy):
        store.add_correction(_new(1, model))
    [job] = store.create_jobs([(STUDY, store.studies_with_new_instances()[0]["max_seq"])])  # its run, done meanwhile
    store.start_job(job.id)
    store.finish_job(job.id, Outcome.RESULT, [], series_uid=SERIES, measurements={"left": 1})
    with pytest.raises(StudyBusy):
        store.add_correction(_new(1, model))  # checked against version 1, which version 2 replaced
    assert store.corrections() == [] and not store.has_instance("8.1")
    assert store.add_correction(_new(1, store.job(job.id))) is not None


def test_a_patients_site_cases_are_forgotten_with_them(store: Store) -> None:
    model = _model_run(store)
    job = _correct(store, model, 1, 110.0)
    store.kept_site_case(job.id, "case_000002")
    assert store.forget_site_cases(Patient("P2")) == []
    assert store.forget_site_cases(PATIENT) == ["case_000002"]
    assert store.forget_site_cases(PATIENT) == []


def test_the_history_keeps_both_and_follow_up_compares_with_the_readers_volumes(store: Store) -> None:
    model = _model_run(store)
    job = store.add_correction(_new(1, model))
    assert job is not None
    store.start_job(job.id)
    reader = dataclasses.replace(_entry(Source.READER, 100.0, None), volumes={("parenchyma", "left"): 100.0})  # the left kidney only
    store.finish_job(job.id, Outcome.RESULT, [], measured=reader)
    both = store.history.both_of_study(STUDY)
    assert [(e.source, e.volumes[("parenchyma", "left")]) for e in both] == [(Source.NODE, 120.0), (Source.READER, 100.0)]
    assert [e.source for e in store.history.entries()] == [Source.NODE, Source.READER]
    [prior] = store.history.of_patient(PATIENT)  # one per study: the reader's, completed with what the reader left out
    assert prior.source is Source.READER and prior.volumes == {("parenchyma", "left"): 100.0, ("parenchyma", "right"): 150.0}
    later = _entry(Source.NODE, 95.0, ("another-model", "2"), study="1.2.3.9", date="20270101")
    followup = compare(later, [prior], ("parenchyma",))
    [change] = followup.changes
    assert (change.side, change.prior_ml, change.change_ml) == ("left", 100.0, -5.0)  # against the reader's 100 ml, though another model measures
    [why] = followup.not_compared  # the right kidney, the node's, is compared as the node's: by the same model only
    assert "another model (renal-synth3-cpu 1)" in why.why
    same = _entry(Source.NODE, 95.0, ("renal-synth3-cpu", "1"), study="1.2.3.9", date="20270101")
    assert {(c.side, c.prior_ml) for c in compare(same, [prior], ("parenchyma",)).changes} == {("left", 100.0), ("right", 150.0)}
    assert store.history.purge_patient(PATIENT, "consent withdrawn") == 2
