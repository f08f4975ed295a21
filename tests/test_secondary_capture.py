"""Secondary Capture for PACS without SEG: a destination that asks for ``sc`` gets a summary page and one key slice
per kidney, in the source's study and patient, burned-in annotation flagged, dciodvfy clean (no error, no
warning), the outlines drawn where the kidneys are; "not for diagnosis" unless the model card allows diagnosis."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage

from dicomnode.base.uids import ResultUids, job_seed
from dicomnode.config import DimseDestination, NodeConfig
from dicomnode.imaging.load import load_series
from dicomnode.instance import Instance
from dicomnode.node.pipeline import process_study
from dicomnode.options import OutputFormat
from dicomnode.outbound.save import save_results
from dicomnode.results.secondary_capture import key_slice, summary_page
from dicomnode.segment.model import Model
from dicomnode.store.states import Outcome
from tests.peers import dciodvfy, tools_missing
from tests.standins import PhantomLabels
from training.phantom_dicom import write_study
from training.phantoms import Grid, Phase

pytestmark = pytest.mark.skipif(bool(tools_missing()), reason=f"missing tools: {tools_missing()}")
LEGACY = DimseDestination("legacy", "LEGACY", "127.0.0.1", 104, formats=(OutputFormat.SC,))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sc")
    series = write_study(4242, folder / "ct", phases=(Phase.ARTERIAL,), grid=Grid.centred(200, 1.6, 36, 5.0), patient_id="SC-PATIENT").series[0]
    instances = [Instance(i, f.name, "study", "series", CTImageStorage, f) for i, f in enumerate(series.files)]
    processed = process_study(instances, NodeConfig(destinations=(LEGACY,)), PhantomLabels(series))
    assert processed.outcome is Outcome.RESULT and processed.results is not None, processed.reasons
    return series, processed, save_results(processed.results, folder / "results")


def test_sc_pages_are_valid_dicom_in_the_source_study(made) -> None:
    series, _, saved = made
    pages = [f for f in saved if f.output is OutputFormat.SC]
    assert len(pages) == 3  # summary, right and left key slices
    source = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    for f in pages:
        assert dciodvfy(f.path) == [], f.path.name
        sc = pydicom.dcmread(f.path)
        assert (sc.StudyInstanceUID, sc.PatientID) == (source.StudyInstanceUID, "SC-PATIENT")
        assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage and sc.BurnedInAnnotation == "YES"
        assert sc.SeriesDescription == "Renal volumes key images (research)"
    assert len({pydicom.dcmread(f.path).SeriesInstanceUID for f in pages}) == 1


def test_key_slices_show_the_outlines_where_the_kidneys_are(made) -> None:
    series, processed, saved = made
    loaded = load_series(series.files)
    right, left = [pydicom.dcmread(f.path).pixel_array for f in saved if f.output is OutputFormat.SC][1:]
    for side, page in (("right", right), ("left", left)):
        assert processed.measurements is not None
        k = key_slice(loaded, processed.measurements, side)
        area = processed.measurements.kidneys[side].parenchyma.sum(axis=(1, 2))
        assert area[k] == area.max()
        red = (page[..., 0] > 200) & (page[..., 1] < 90) & (page[..., 2] < 90)  # cortex outline
        columns = np.nonzero(red.any(axis=0))[0]
        assert red.sum() > 200
        # both kidneys are outlined, one each side of the page's middle (patient's right on the left)
        assert columns.min() < page.shape[1] / 2 < columns.max()


def test_not_for_diagnosis_is_written_unless_the_card_allows_diagnosis(made) -> None:
    _, processed, _ = made
    research, clinical = Model("m", Path("."), {}, "0"), Model("m", Path("."), {"for_diagnosis": True}, "0")
    warned = summary_page(processed.measurements, processed.qc, processed.plan, research)
    cleared = summary_page(processed.measurements, processed.qc, processed.plan, clinical)

    def pink(page: np.ndarray) -> int:  # the warning's colour
        return int(((page[..., 0] > 200) & (page[..., 1] > 100) & (page[..., 1] < 160)).sum())

    assert pink(warned) > 100 and pink(cleared) == 0


def test_destinations_get_only_the_formats_they_ask_for(made) -> None:
    _, _, saved = made
    config = NodeConfig(destinations=(LEGACY, replace(LEGACY, name="pacs", formats=(OutputFormat.SEG, OutputFormat.SR))))
    wanted = {d.name: sorted({f.output.value for f in saved if f.output in d.formats}) for d in config.destinations}
    assert wanted == {"legacy": ["sc"], "pacs": ["seg", "sr"]}


def test_a_job_run_again_makes_the_same_instances(made) -> None:
    series, _, _ = made
    instances = [Instance(i, f.name, "study", "series", CTImageStorage, f) for i, f in enumerate(series.files)]
    config = NodeConfig(destinations=(LEGACY,))

    def uids(seed: str) -> list[str]:
        results = process_study(instances, config, PhantomLabels(series), ResultUids(seed)).results
        assert results is not None and results.seg is not None
        tracking = [s.TrackingUID for s in results.seg.SegmentSequence]
        return [results.seg.SOPInstanceUID, results.seg.SeriesInstanceUID, results.sr.SOPInstanceUID, *(sc.SOPInstanceUID for sc in results.sc), *tracking]

    first, again, next_version = uids(job_seed("1.2.3", 1)), uids(job_seed("1.2.3", 1)), uids(job_seed("1.2.3", 2))
    assert first == again and len(set(first)) == len(first)
    assert not set(first) & set(next_version)
