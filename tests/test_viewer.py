"""The results in a real viewer: OHIF (its built app from the npm registry) in headless Chromium, over Orthanc's
DICOMweb, opens the phantom study, loads the SEG the node sent and lists its six segments with their labels and
colours, drawn on the CT; the voxels OHIF counts in each segment make the volume in the node's SR.
(OHIF's own "Volume" figure for these segments is 0.49 times that: it reports 74,166 mm3 for 11,754 voxels of
1.6 x 1.6 x 5 mm, i.e. a 2.47 mm slice step on a 5 mm series whose SEG states 5 mm; so the test compares counts.)

OHIF 3.13 lists the measurements of TID 1500 groups that carry image coordinates (SCOORD); the node's volumes are
TID 1411 groups that reference SEG segments, which OHIF does not list, so the page shows "No tracked measurements"
for the SR. dcmqi's tid1500reader reads them (tests/test_dcmqi.py)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import CTImageStorage

from dicomnode.config import DimseDestination, NodeConfig
from dicomnode.instance import Instance
from dicomnode.node.pipeline import process_study
from dicomnode.outbound.save import save_results
from dicomnode.outbound.send import send_due
from dicomnode.store import Queued, Store
from dicomnode.store.states import JobDelivery, Outcome
from tests import ohif
from tests.peers import REPO, Orthanc, free_port, tools_missing
from tests.readback import sr_groups, voxel_ml
from tests.standins import PhantomLabels
from training.phantom_dicom import write_study
from training.phantoms import Grid, Phase

pytestmark = pytest.mark.skipif(
    not ohif.available() or shutil.which("chromium") is None or bool(tools_missing()),
    reason="needs scripts/setup-viewer.sh (OHIF, playwright-core), chromium and Orthanc",
)
LABELS = [f"{side} renal {s}" for s in ("cortex", "medulla", "parenchyma") for side in ("Left", "Right")]


def _rgb(css: str) -> tuple[int, ...]:
    return tuple(int(v) for v in re.findall(r"\d+", css)[:3])


def test_ohif_draws_the_seg_on_the_ct_and_lists_its_segments(tmp_path: Path, orthanc: Orthanc) -> None:
    series = write_study(4242, tmp_path / "ct", phases=(Phase.ARTERIAL,), grid=Grid.centred(200, 1.6, 36, 5.0)).series[0]
    instances = [Instance(i, f.name, "study", "series", CTImageStorage, f) for i, f in enumerate(series.files)]
    processed = process_study(instances, NodeConfig(), PhantomLabels(series))
    assert processed.outcome is Outcome.RESULT and processed.results is not None
    saved = save_results(processed.results, tmp_path / "results")
    orthanc.dicomweb = True
    orthanc.start()
    orthanc.upload(series.files)  # the PACS holds the CT; the node's send stage delivers SEG and SR by C-STORE
    store = Store(tmp_path / "node.sqlite")
    job = store.create_job(processed.results.sr.StudyInstanceUID, 1)
    store.start_job(job.id)
    store.finish_job(job.id, Outcome.RESULT, [Queued("pacs", f.sop_uid, f.path) for f in saved], verdict="ok", reasons=[])
    config = NodeConfig(destinations=(DimseDestination("pacs", orthanc.aet, "127.0.0.1", orthanc.dicom_port),))
    assert send_due(config, store) == 2 and store.job(job.id).delivery is JobDelivery.DELIVERED
    store.close()

    viewer = ohif.ViewerServer(free_port(), f"http://127.0.0.1:{orthanc.http_port}")
    viewer.start()
    try:
        shot = tmp_path / "ohif.png"
        page = ohif.open_study(f"http://127.0.0.1:{viewer.port}", processed.results.sr.StudyInstanceUID, processed.results.seg.SeriesDescription, shot)
    finally:
        viewer.stop()

    assert {"Renal segmentation (research)", "Renal volumes (research)"} <= set(page["series"])
    assert [s["label"] for s in page["segments"]] == LABELS
    assert [s["number"] for s in page["segments"]] == [str(n) for n in range(1, 7)]
    for segment in page["segments"]:  # the SEG's recommended colours reach the viewer
        red, green, blue = _rgb(segment["color"])
        if "cortex" in segment["label"]:
            assert red > 150 and green < 120, segment
        if "medulla" in segment["label"]:
            assert red > 150 and green > 150 and blue < 100, segment
    seg = pydicom.dcmread(next(f.path for f in saved if f.output.value == "seg"))
    assert len(seg.SegmentSequence) == 6
    reported = {g.identifier: g.volume_ml for g in sr_groups(processed.results.sr) if g.segment_number}
    for segment in page["segments"]:  # OHIF measures each segment itself: the same volume as the SR's
        assert segment["voxels"] * voxel_ml(seg) == pytest.approx(reported[segment["label"].lower()], rel=1e-3), segment
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)[60:880, 290:1310]  # the viewport
    red = (pixels[..., 0] > 180) & (pixels[..., 1] < 110) & (pixels[..., 2] < 110)
    yellow = (pixels[..., 0] > 180) & (pixels[..., 1] > 160) & (pixels[..., 2] < 90)
    assert red.sum() > 200 and yellow.sum() > 50  # cortex and medulla drawn on the CT
    columns = np.nonzero(red.any(axis=0))[0]
    assert columns.min() < pixels.shape[1] / 2 < columns.max()  # on both kidneys, one each side of the spine
    if os.environ.get("DICOMNODE_UPDATE_DOCS"):  # refreshes the README's picture
        shutil.copy(shot, REPO / "docs" / "ohif-seg.png")
