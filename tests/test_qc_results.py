"""What leaves the node when QC fails: nothing but the reasons (withhold), or SEG and SR marked for review (flag).

Real pixels (the shared real CT) with its reference kidney masks as the prediction, the right kidney left out.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import CTImageStorage
from scipy import ndimage

from dicomnode.config import NodeConfig, QCConfig
from dicomnode.imaging.load import LoadedSeries
from dicomnode.instance import Instance
from dicomnode.node.pipeline import PARENCHYMA_ONLY, WITHHELD, process_study
from dicomnode.options import OnFail
from dicomnode.outbound.save import save_results
from dicomnode.segment.model import Model, Segmentation, TissueLabel
from dicomnode.store.states import Outcome
from tests.peers import REAL_CT as REAL
from tests.peers import dciodvfy, tools_missing
from tests.readback import sr_groups, sr_texts, sr_volumes
from training.volume_dicom import write_volume_series

pytestmark = [
    pytest.mark.skipif(not REAL.exists(), reason="shared real CT not present"),
    pytest.mark.skipif(bool(tools_missing()), reason=f"missing tools: {tools_missing()}"),
]


class ReferenceLabels:
    """Segments with the reference masks of the shared real CT (left kidney only): a prediction known in advance."""

    model = Model("reference-labels", Path("."), {"version": "test"}, "0")

    def segment(self, series: LoadedSeries) -> Segmentation:
        left = sitk.GetArrayFromImage(sitk.ReadImage(str(REAL / "example_ct_labels" / "kidney_left.nii.gz"))) > 0
        labels = np.where(left, TissueLabel.CORTEX, 0).astype(np.uint8)
        labels[ndimage.binary_erosion(left, iterations=2)] = TissueLabel.MEDULLA
        return Segmentation(labels, self.model, "cpu")


@pytest.fixture(scope="module")
def instances(tmp_path_factory) -> list[Instance]:
    files = write_volume_series(sitk.ReadImage(str(REAL / "example_ct.nii.gz")), tmp_path_factory.mktemp("ct"))
    return [Instance(i, f.name, "study", "series", CTImageStorage, f) for i, f in enumerate(files)]


def test_withheld_study_sends_only_the_reasons(instances: list[Instance]) -> None:
    """All or nothing (``qc.per_kidney: false``, the behaviour before per-kidney reports): a missing right kidney
    withholds the left one too."""
    config = replace(NodeConfig(), send_text_sr_without_result=True, qc=QCConfig(per_kidney=False))
    processed = process_study(instances, config, ReferenceLabels())
    assert processed.outcome is Outcome.NO_RESULT and processed.verdict == WITHHELD
    findings = processed.qc.lines()
    assert "QC right kidney: kidney missing: no right kidney found" in findings
    assert any(line.startswith("QC study: not arterial phase") for line in findings)
    assert processed.results.seg is None
    assert sr_volumes(processed.results.sr) == []
    assert set(findings) <= set(sr_texts(processed.results.sr))


def test_flagged_study_sends_seg_and_sr_marked_for_review(instances: list[Instance], tmp_path: Path) -> None:
    config = replace(NodeConfig(), qc=QCConfig(on_fail=OnFail.FLAG, per_kidney=False))
    processed = process_study(instances, config, ReferenceLabels())
    assert processed.outcome is Outcome.RESULT and "QC failed" in processed.verdict
    seg, sr = processed.results.seg, processed.results.sr
    assert seg.SeriesDescription.endswith("QC: review") and sr.SeriesDescription.endswith("QC: review")
    groups = sr_groups(sr)
    volumes = [g for g in groups if g.segment_number]
    assert {g.identifier for g in volumes} == {f"left renal {s}" for s in ("cortex", "medulla", "parenchyma")}
    assert all(g.qc == "Usable - Does not meet the quality control standard" for g in groups)
    study = next(g for g in groups if not g.segment_number)
    assert "QC right kidney: kidney missing: no right kidney found" not in volumes[0].findings
    assert any(text.startswith("QC study: not arterial phase") for text in study.findings)
    assert "QC right kidney: kidney missing: no right kidney found" in study.findings  # no group of its own
    reported = [text for g in groups for text in g.findings]
    assert set(processed.qc.lines()) <= set(reported)
    assert study.findings[0] == processed.qc.verdict
    segment_uids = {s.SegmentLabel.lower(): s.TrackingUID for s in seg.SegmentSequence}
    assert {g.identifier: g.tracking_uid for g in volumes} == segment_uids  # one UID per structure and side in both
    types = {
        s.SegmentLabel.lower(): (
            s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator,
            s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
            s.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeValue,
        )
        for s in seg.SegmentSequence
    }
    # parenchyma is the kidney itself (SCT 91772007 means "Organ" in DICOM's segmentation context groups); medulla
    # is Uberon's renal medulla, a scheme of PS3.16 Table 8-1, so no private scheme needs declaring
    assert types == {
        "left renal parenchyma": ("SCT", "64033007", "7771000"),
        "left renal cortex": ("SCT", "50403003", "7771000"),
        "left renal medulla": ("UBERON", "0000362", "7771000"),
    }
    for ds in (seg, sr):
        assert not any(item.CodingSchemeDesignator.startswith("99") for item in ds.get("CodingSchemeIdentificationSequence", []))
    unaided = {}  # what pydicom writes of each dataset without save_dataset's marks
    for ds in (seg, sr):
        buffer = pydicom.filebase.DicomBytesIO()
        pydicom.dcmwrite(buffer, copy.deepcopy(ds), enforce_file_format=True)
        unaided[str(ds.SOPInstanceUID)] = buffer.getvalue()
    for saved in save_results(processed.results, tmp_path):
        assert dciodvfy(saved.path) == [], saved.path.name
        assert saved.path.read_bytes() == unaided[saved.sop_uid], saved.path.name


def test_one_kidney_is_delivered_and_the_sr_says_the_other_was_not_found(instances: list[Instance], tmp_path: Path) -> None:
    """A solitary left kidney (the right one not in the prediction): its parenchyma is sent, not withheld, with no
    total or split function; the SR says no right kidney was found, and holds no group for it."""
    processed = process_study(instances, NodeConfig(), ReferenceLabels())
    assert processed.outcome is Outcome.RESULT and processed.structures == ("parenchyma",), processed.reasons
    assert processed.plan is not None and processed.plan.delivered == (("parenchyma", "left"),)
    assert "right kidney not reported (no kidney was found on this side)" in processed.verdict
    seg, sr = processed.results.seg, processed.results.sr
    assert not sr.SeriesDescription.endswith("QC: review")
    assert {s.SegmentLabel.lower() for s in seg.SegmentSequence} == {"left renal parenchyma"}
    groups = sr_groups(sr)
    volumes = {g.identifier: g.volume_ml for g in groups if g.segment_number}
    assert volumes == {"left renal parenchyma": pytest.approx(138.9, abs=0.2)}
    study = next(g for g in groups if not g.segment_number)
    assert "Right kidney not reported: no kidney was found on this side" in study.findings
    record = processed.record()["measurements"]
    assert record["left_split"] is None and record["total_parenchyma_ml"] is None
    assert record["not_reported"][-1] == "Right kidney not reported: no kidney was found on this side"
    assert processed.measured is not None and set(processed.measured.volumes) == {("parenchyma", "left")}
    assert processed.measured.left_split is None
    for saved in save_results(processed.results, tmp_path):
        assert dciodvfy(saved.path) == [], saved.path.name


class BothReferenceKidneys(ReferenceLabels):
    """Both reference kidneys of the shared real CT as the prediction."""

    def segment(self, series: LoadedSeries) -> Segmentation:
        both = np.zeros(series.hu.shape, bool)
        for side in ("left", "right"):
            both |= sitk.GetArrayFromImage(sitk.ReadImage(str(REAL / "example_ct_labels" / f"kidney_{side}.nii.gz"))) > 0
        labels = np.where(both, TissueLabel.CORTEX, 0).astype(np.uint8)
        labels[ndimage.binary_erosion(both, iterations=2)] = TissueLabel.MEDULLA
        return Segmentation(labels, self.model, "cpu")


def test_non_contrast_study_sends_parenchyma_alone_and_says_why(instances: list[Instance], tmp_path: Path) -> None:
    """The real CT is non-contrast: its parenchyma passes QC and is sent; cortex and medulla are not, and the SR says why."""
    processed = process_study(instances, NodeConfig(), BothReferenceKidneys())
    assert processed.outcome is Outcome.RESULT and processed.structures == ("parenchyma",), processed.reasons
    assert processed.verdict.endswith(PARENCHYMA_ONLY)
    seg, sr = processed.results.seg, processed.results.sr
    assert not seg.SeriesDescription.endswith("QC: review") and not sr.SeriesDescription.endswith("QC: review")
    assert {s.SegmentLabel.lower() for s in seg.SegmentSequence} == {"left renal parenchyma", "right renal parenchyma"}
    groups = sr_groups(sr)
    volumes = {g.identifier: g.volume_ml for g in groups if g.segment_number}
    assert set(volumes) == {"left renal parenchyma", "right renal parenchyma"}
    assert volumes["right renal parenchyma"] == pytest.approx(188.8, abs=0.2) and volumes["left renal parenchyma"] == pytest.approx(138.9, abs=0.2)
    assert all(g.qc == "Usable - Meets the quality control standard" for g in groups)
    study = next(g for g in groups if not g.segment_number)
    assert study.findings[0] == "QC passed for renal parenchyma"
    for side in ("Left", "Right"):
        assert any(text.startswith(f"{side} renal cortex and medulla not reported: not measured in this phase") for text in study.findings), study.findings
    for saved in save_results(processed.results, tmp_path):
        assert dciodvfy(saved.path) == [], saved.path.name


def test_all_or_nothing_is_one_setting_away(instances: list[Instance]) -> None:
    config = replace(NodeConfig(), qc=QCConfig(per_structure=False))
    processed = process_study(instances, config, BothReferenceKidneys())
    assert processed.outcome is Outcome.NO_RESULT and processed.verdict == WITHHELD
