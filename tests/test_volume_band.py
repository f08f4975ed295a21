"""Each volume with the model's own range: the band between its probability thresholds, in the SR as minimum and
maximum, on the record, and withheld by QC where it is wider than the setting."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import CTImageStorage

from dicomnode.config import NodeConfig, QCConfig
from dicomnode.imaging.load import LoadedSeries
from dicomnode.instance import Instance
from dicomnode.measured import Source
from dicomnode.node.export import row as export_row
from dicomnode.node.pipeline import process_study
from dicomnode.outbound.save import save_results
from dicomnode.renal import Structure
from dicomnode.segment.band import VolumeBand, band_of
from dicomnode.segment.model import Segmentation
from dicomnode.store import Store, history
from dicomnode.store.states import Outcome
from tests.peers import dciodvfy, tools_missing
from tests.readback import sr_groups
from tests.standins import PhantomLabels
from training.phantom_dicom import write_study
from training.phantoms import Grid, Phase


def test_a_band_counts_the_volume_above_each_threshold_against_the_labels_volume() -> None:
    z, y, x = np.mgrid[:20, :20, :20]
    radius = np.sqrt((z - 10) ** 2 + (y - 10) ** 2 + (x - 10) ** 2)
    parenchyma = np.select([radius < 5, radius < 7, radius < 8], [0.9, 0.6, 0.3], 0.0).astype(np.float32)
    cortex = np.where((radius >= 5) & (radius < 7), 0.8, 0.1).astype(np.float32)
    band = band_of(np.stack([parenchyma, cortex]), (slice(0, 20),) * 3)
    core, shell, outer = (int(np.count_nonzero(m)) for m in (radius < 5, (radius >= 5) & (radius < 7), (radius >= 7) & (radius < 8)))
    assert band.ratios[Structure.PARENCHYMA] == pytest.approx((core / (core + shell), (core + shell + outer) / (core + shell)))
    assert band.ratios[Structure.CORTEX] == pytest.approx((1.0, 1.0))
    # medulla: certainly kidney and certainly not cortex (the core), up to possibly kidney and possibly not cortex
    assert band.ratios[Structure.MEDULLA] == pytest.approx((1.0, (core + outer) / core))
    assert band.holds((0, 0, 19)) and not band.holds((0, 0, 20))
    assert band.flipped((2,), (20, 20, 30)).box == (slice(0, 20), slice(0, 20), slice(10, 30))


class BandedPhantomLabels(PhantomLabels):
    """The phantom's true labels, with one band over the whole grid: each volume 0.95-1.05 (or ``spread``) of itself."""

    def __init__(self, series, spread: tuple[float, float] = (0.95, 1.05)) -> None:
        super().__init__(series)
        self.spread = spread

    def segment(self, series: LoadedSeries) -> Segmentation:
        made = super().segment(series)
        band = VolumeBand(tuple(slice(0, n) for n in made.labels.shape), dict.fromkeys(Structure, self.spread))
        return replace(made, bands=(band,))


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    made = write_study(4244, tmp_path_factory.mktemp("ct"), phases=(Phase.ARTERIAL,), grid=Grid.centred(160, 2.0, 30, 5.0)).series[0]
    return made, [Instance(i, f.name, "study", "series", CTImageStorage, f) for i, f in enumerate(made.files)]


@pytest.mark.skipif(bool(tools_missing()), reason=f"missing tools: {tools_missing()}")
def test_each_volume_is_sent_with_its_range_in_the_sr_and_the_record(series, tmp_path: Path) -> None:
    made, instances = series
    processed = process_study(instances, NodeConfig(), BandedPhantomLabels(made))
    assert processed.outcome is Outcome.RESULT and processed.plan is not None and len(processed.plan.delivered) == 6, processed.reasons
    groups = [g for g in sr_groups(processed.results.sr) if g.segment_number]
    for group in groups:
        assert group.range_ml == pytest.approx({"Minimum": 0.95 * group.volume_ml, "Maximum": 1.05 * group.volume_ml}, abs=2e-3), group.identifier
    study = next(g for g in sr_groups(processed.results.sr) if not g.segment_number)
    assert study.findings[-1].startswith("Minimum and maximum of each volume: volume range: where the model's probability is above 0.75")
    record = processed.record()["measurements"]
    assert record["parenchyma_left_range_ml"] == pytest.approx([0.95 * record["parenchyma_left_ml"], 1.05 * record["parenchyma_left_ml"]], abs=0.02)
    saved = {f.output.value: f.path for f in save_results(processed.results, tmp_path)}
    for path in saved.values():
        assert dciodvfy(path) == [], path.name
    tid1500reader = shutil.which("tid1500reader") or str(Path(sys.executable).parent / "tid1500reader")
    if Path(tid1500reader).exists():  # dcmqi, the reader 3D Slicer uses: the volume first, then its minimum and maximum
        out = tmp_path / "sr.json"
        run = subprocess.run([tid1500reader, "--inputDICOM", str(saved["sr"]), "--outputMetadata", str(out)], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]
        for group in (m for m in json.loads(out.read_text())["Measurements"] if m.get("measurementItems")):
            values = [float(item["value"]) for item in group["measurementItems"]]
            assert len(values) == 3 and values[1] == pytest.approx(0.95 * values[0], abs=2e-3) and values[2] == pytest.approx(1.05 * values[0], abs=2e-3)
            assert [item.get("derivationModifier", {}).get("CodeMeaning") for item in group["measurementItems"]] == [None, "Minimum", "Maximum"]


def test_a_volume_the_model_is_unsure_of_is_withheld(series) -> None:
    made, instances = series
    processed = process_study(instances, NodeConfig(), BandedPhantomLabels(made, (0.9, 1.2)))
    assert processed.outcome is Outcome.NO_RESULT
    assert any("the model is unsure of the volume: parenchyma" in line for line in processed.qc.lines()), processed.qc.lines()
    wider = replace(NodeConfig(), qc=QCConfig(max_volume_range_share=0.4, max_cortex_range_share=0.4))
    assert process_study(instances, wider, BandedPhantomLabels(made, (0.9, 1.2))).outcome is Outcome.RESULT


class CortexUnsure(BandedPhantomLabels):
    """Parenchyma certain (0.97-1.03), cortex and medulla not (0.8-1.2)."""

    def segment(self, series: LoadedSeries) -> Segmentation:
        made = super().segment(series)
        ratios = {Structure.PARENCHYMA: (0.97, 1.03), Structure.CORTEX: (0.8, 1.2), Structure.MEDULLA: (0.8, 1.2)}
        return replace(made, bands=(VolumeBand(made.bands[0].box, ratios),))


def test_a_cortex_the_model_is_unsure_of_leaves_the_parenchyma_alone(series) -> None:
    made, instances = series
    processed = process_study(instances, NodeConfig(), CortexUnsure(made))
    assert processed.outcome is Outcome.RESULT and processed.structures == ("parenchyma",), processed.reasons
    assert any("the model is unsure of cortex and medulla: cortex" in line for line in processed.qc.lines())


def test_the_history_keeps_each_range_and_the_export_gives_it(series, tmp_path: Path) -> None:
    made, instances = series
    processed = process_study(instances, NodeConfig(), BandedPhantomLabels(made))
    entry = processed.measured
    assert entry is not None and set(entry.ranges) == set(entry.volumes)
    store = Store(tmp_path / "node.sqlite")
    with store.db.transaction() as tx:
        history.replace(tx, entry.study_uid, 1, entry, Source.NODE)
    kept = store.history.of_study(entry.study_uid)
    assert kept is not None and kept.ranges == entry.ranges  # rounded to 1 µl before it was stored
    columns = export_row(kept)
    low, high = entry.ranges[("parenchyma", "right")]
    assert columns["parenchyma_right_min_ml"] == pytest.approx(low) and columns["parenchyma_right_max_ml"] == pytest.approx(high)
    store.close()
