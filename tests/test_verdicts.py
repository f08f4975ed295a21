"""Studies that must give a verdict, not a result: instances naming different patients (no SR at all), and an
arterial series whose pixel description is wrong (refused with the attribute named, never measured)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import CTImageStorage

from dicomnode.config import NodeConfig
from dicomnode.instance import Instance
from dicomnode.node.pipeline import IDENTITY_CONFLICT, process_study
from dicomnode.selection.series import NO_ARTERIAL, patient_conflicts, summarise
from dicomnode.store.states import Outcome
from training.phantom_dicom import write_study
from training.phantoms import Grid, Phase


class NeverCalled:
    """A segmenter the pipeline must not reach: identity is checked before anything is segmented."""

    model = None

    def segment(self, series):
        raise AssertionError("segmented a study whose patient identity conflicts")


def _study(tmp_path: Path):
    study = write_study(71, tmp_path, phases=(Phase.NONCONTRAST, Phase.ARTERIAL), grid=Grid.centred(64, 5.0, 20, 5.0))
    instances = [Instance(i, f.name, study.study_uid, s.series_uid, CTImageStorage, f) for s in study.series for i, f in enumerate(s.files)]
    return study, instances


def _set(files: list[Path], **values) -> None:
    for path in files:
        ds = pydicom.dcmread(path)
        for key, value in values.items():
            setattr(ds, key, value)
        ds.save_as(path)


def test_two_patient_ids_in_one_study_is_a_verdict_without_any_sr(tmp_path: Path) -> None:
    study, instances = _study(tmp_path)
    _set(study.by_phase(Phase.NONCONTRAST).files, PatientID="OTHER-PATIENT")
    processed = process_study(instances, replace(NodeConfig(), send_text_sr_without_result=True), NeverCalled())
    assert processed.outcome is Outcome.NO_RESULT and processed.verdict == IDENTITY_CONFLICT
    assert processed.results is None
    assert len(processed.reasons) == 1 and processed.reasons[0].startswith("PatientID differs")
    assert "ABDOMEN NATIVE 5.0 B30f" in processed.reasons[0] and "ABDOMEN ARTERIAL 5.0 B30f" in processed.reasons[0]
    assert "OTHER-PATIENT" not in processed.reasons[0]  # reasons go to logs and the job record: no identifiers


def test_birth_date_conflict_inside_one_series(tmp_path: Path) -> None:
    study, instances = _study(tmp_path)
    _set(study.by_phase(Phase.ARTERIAL).files[:3], PatientBirthDate="19701231")
    processed = process_study(instances, NodeConfig(), NeverCalled())
    assert processed.verdict == IDENTITY_CONFLICT and processed.reasons[0].startswith("PatientBirthDate differs")


def test_a_blank_name_in_one_series_is_no_conflict(tmp_path: Path) -> None:
    study, instances = _study(tmp_path)
    _set(study.by_phase(Phase.NONCONTRAST).files, PatientName="")
    assert patient_conflicts(summarise(instances)) == []


@pytest.mark.parametrize(
    "values, named",
    [
        ({"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7}, "BitsAllocated"),  # 16-bit pixels declared 8-bit
        ({"PixelRepresentation": 0}, "PixelRepresentation"),  # signed pixels declared unsigned: -1000 reads 64536
        ({"RescaleSlope": "0"}, "RescaleSlope 0"),  # was read as 1 and measured (finding 7 of the second adversarial run)
        ({"PixelSpacing": ["0", "0"]}, "PixelSpacing"),  # was "no kidney found" (finding 6)
        ({"ImagePositionPatient": ["nan", "0", "0"]}, "ImagePositionPatient"),  # was a ValueError from inside nnU-Net
    ],
)
def test_arterial_series_with_a_wrong_pixel_description_is_refused_not_measured(tmp_path: Path, values: dict, named: str) -> None:
    study, instances = _study(tmp_path)
    _set(study.by_phase(Phase.ARTERIAL).files, **values)
    processed = process_study(instances, NodeConfig(), NeverCalled())
    assert processed.outcome is Outcome.NO_RESULT and processed.verdict in ("arterial series refused", NO_ARTERIAL), processed
    assert any(named in reason for reason in processed.reasons), processed.reasons
    assert processed.measurements is None and processed.results is None
