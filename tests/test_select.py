"""Series selection: rules on tags in several languages, timing, exclusions, and the no-arterial verdict."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

from pydicom.uid import CTImageStorage

from dicomnode.config import SelectionRules as Rules
from dicomnode.instance import Instance
from dicomnode.selection.series import NO_ARTERIAL, PARENCHYMA_SERIES, SELECTED, SeriesSummary, select_series, summarise
from training.phantom_dicom import write_study
from training.phantoms import Grid

BOLUS = dt.time(10, 15, 0)


def series(uid: str, description: str, delay_s: float | None, **changes) -> SeriesSummary:
    acquired = (dt.datetime.combine(dt.date.today(), BOLUS) + dt.timedelta(seconds=delay_s if delay_s is not None else -120)).time()
    base = SeriesSummary(
        series_uid=uid,
        series_number=1,
        modality="CT",
        sop_classes=frozenset({CTImageStorage}),
        description=description,
        protocol="",
        image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
        contrast_agent="Iohexol" if delay_s is not None else "",
        bolus_start=BOLUS if delay_s is not None else None,
        acquisition_time=acquired,
        normal_z=1.0,
        slice_mm=5.0,
        slices=60,
        files=(),
    )
    return replace(base, **changes)


def test_phantom_study_selects_the_arterial_series(tmp_path: Path) -> None:
    study = write_study(3, tmp_path, grid=Grid.centred(32, 10.0, 24, 8.0))
    instances = [Instance(i, f.name, study.study_uid, s.series_uid, CTImageStorage, f) for s in study.series for i, f in enumerate(s.files)]
    selection = select_series(summarise(instances), Rules())
    assert selection.verdict == SELECTED
    assert selection.series.series_uid == study.series[1].series_uid
    assert selection.series.slices == 24


def test_chinese_descriptions_without_timing_tags() -> None:
    plain = series("1", "腹部平扫", None)
    arterial = series("2", "腹部 皮质期 5mm", None, contrast_agent="碘海醇")
    venous = series("3", "腹部 实质期 5mm", None, contrast_agent="碘海醇")
    selection = select_series([plain, arterial, venous], Rules())
    assert selection.series.series_uid == "2"


def test_timing_decides_when_descriptions_say_nothing() -> None:
    candidates = [series("1", "Abdomen 5.0", 95.0), series("2", "Abdomen 5.0", 33.0), series("3", "Abdomen 5.0", 300.0)]
    selection = select_series(candidates, Rules())
    assert selection.series.series_uid == "2"
    assert any("33 s after bolus start" in reason for reason in selection.reasons)


def test_no_arterial_series_is_a_verdict_with_reasons() -> None:
    selection = select_series([series("1", "Abdomen native", None), series("2", "Abdomen portal venous", 80.0)], Rules(parenchyma_fallback=False))
    assert selection.series is None and selection.verdict == NO_ARTERIAL
    assert len(selection.reasons) == 2 and "native" in selection.reasons[0]


def test_exclusions_scout_derived_reformat_short_and_non_ct() -> None:
    excluded = [
        series("scout", "Topogram arterial", 30.0, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), slices=1),
        series("mpr", "Arterial COR 3mm", 30.0, image_type=("DERIVED", "SECONDARY", "MPR"), normal_z=0.0),
        series("thin-few", "Arterial", 30.0, slices=5),
        series("sc", "Arterial summary", 30.0, modality="OT", sop_classes=frozenset({"1.2.840.10008.5.1.4.1.1.7"})),
    ]
    selection = select_series(excluded, Rules())
    assert selection.series is None
    reasons = " ".join(selection.reasons)
    for expected in ("localizer", "not ORIGINAL", "not axial", "fewer than 20", "not CT"):
        assert expected in reasons
    chosen = select_series(excluded + [series("ok", "Arterial 5mm", 30.0)], Rules())
    assert chosen.series.series_uid == "ok"


def test_keywords_match_whole_words_only() -> None:
    # "art" must not match inside "partial" or "start"
    selection = select_series([series("1", "Partial start", None)], Rules(parenchyma_fallback=False))
    assert selection.series is None


def _blank_tags(files, description: str, keep_contrast: bool) -> None:
    import pydicom

    for path in files:
        ds = pydicom.dcmread(path)
        ds.SeriesDescription, ds.ProtocolName = description, ""
        if not keep_contrast:
            for keyword in ("ContrastBolusAgent", "ContrastBolusStartTime"):
                if keyword in ds:
                    delattr(ds, keyword)
        ds.save_as(path)


def _instances(study):
    return [Instance(i, f.name, study.study_uid, s.series_uid, CTImageStorage, f) for s in study.series for i, f in enumerate(s.files)]


def test_image_check_decides_when_tags_are_missing(tmp_path: Path) -> None:
    study = write_study(31, tmp_path, grid=Grid.centred(128, 2.8, 24, 8.0))
    for s in study.series:
        _blank_tags(s.files, "Abdomen 5.0", keep_contrast=False)
    selection = select_series(summarise(_instances(study)), Rules())
    assert selection.series.series_uid == study.series[1].series_uid
    assert any("arterial enhancement" in reason for reason in selection.reasons)


def test_image_check_overrules_a_mislabelled_series(tmp_path: Path) -> None:
    study = write_study(32, tmp_path, grid=Grid.centred(128, 2.8, 24, 8.0))
    _blank_tags(study.series[0].files, "Abdomen arterial", keep_contrast=False)  # the unenhanced series, mislabelled
    _blank_tags(study.series[1].files, "Abdomen 5.0", keep_contrast=True)
    selection = select_series(summarise(_instances(study)), Rules())
    assert selection.series.series_uid == study.series[1].series_uid
    assert any("tags and image disagree" in reason for reason in selection.reasons)


def test_six_series_study_picks_the_thick_axial_arterial_reconstruction() -> None:
    study = [
        series("scout", "Topogram 0.6 T20f", None, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), slices=2),
        series("native", "Abdomen nativ 5.0", None),
        series("art-thin", "Abdomen arteriell 1.0 B30f", 30.0, slice_mm=1.0, slices=300),
        series("art-thick", "Abdomen arteriell 5.0 B30f", 30.0, slice_mm=5.0, slices=60),
        series("art-cor", "Abdomen arteriell COR 3.0", 30.0, image_type=("DERIVED", "SECONDARY", "MPR"), normal_z=0.0),
        series("venous", "Abdomen venös 5.0", 70.0),
        series("dose", "Dose Report", None, modality="SR", sop_classes=frozenset({"1.2.840.10008.5.1.4.1.1.88.67"}), slices=1),
    ]
    selection = select_series(study, Rules())
    assert selection.series.series_uid == "art-thick"
    assert [s.series_uid for s in selection.fallbacks] == ["art-thin"]
    assert any("modality SR, not CT" in reason for reason in selection.reasons)


def test_without_an_arterial_series_the_best_other_one_gives_parenchyma_only() -> None:
    selection = select_series([series("1", "Abdomen native", None), series("2", "Abdomen portal venous", 80.0)], Rules())
    assert selection.parenchyma_only and selection.series is not None and selection.verdict == PARENCHYMA_SERIES
    assert selection.reasons[0].endswith("for renal parenchyma only (no arterial series)")
