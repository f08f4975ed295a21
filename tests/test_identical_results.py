"""Work on speed and memory changes nothing a reader sees: a thin-slice phantom through the pipeline gives the same
kidney masks, volumes, SEG and SR as the fingerprint recorded before (``tests/data/identical_results.json``), and
its volume the same reduction to the model's spacing.

The phantom's true labels stand in for the model (its output may differ in the last bits from one CPU to another;
the reduction it is given is compared instead). Dates, times and UIDs are left out of the SEG and SR (they differ
from run to run); everything else is compared.
Where a change is meant to alter the results (a new model, a new QC rule), record the fingerprint again with
``.venv/bin/python -m tests.test_identical_results --record`` and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicomnode.base.uids import ResultUids
from dicomnode.config import NodeConfig
from dicomnode.imaging.load import load_series
from dicomnode.instance import Instance
from dicomnode.node.pipeline import process_study
from dicomnode.results.sr import image_library
from dicomnode.segment.resample import reduced
from tests.peers import REAL_CT
from tests.standins import PhantomLabels
from training.phantom_dicom import write_study
from training.phantoms import Grid, Phase

REPO = Path(__file__).resolve().parent.parent
RECORD = REPO / "tests" / "data" / "identical_results.json"
#: 200 slices of 1 mm: the series is reduced to the model's spacing, as a thin-slice study is.
GRID = Grid.centred(256, 1.0, 200, 1.0)
SEED = 2024
#: (z, y, x) mm: the shipped model's spacing, to which a thin-slice series is reduced.
MODEL_SPACING = np.array([5.0, 1.6, 1.6])


def _stripped(ds: pydicom.Dataset) -> pydicom.Dataset:
    """A copy without dates, times and UIDs, at any depth."""
    out = pydicom.Dataset()
    for element in ds:
        if element.VR in ("DA", "TM", "DT", "UI"):
            continue
        if element.VR == "SQ":
            out.add_new(element.tag, "SQ", [_stripped(item) for item in element.value])
        else:
            out.add_new(element.tag, element.VR, element.value)
    return out


def _digest(ds: pydicom.Dataset) -> str:
    text = "\n".join(f"{e.tag} {e.VR} {hashlib.sha256(e.value).hexdigest() if isinstance(e.value, bytes) else e.value!r}" for e in _stripped(ds).iterall())
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint(folder: Path) -> dict[str, object]:
    """Masks, volumes, SEG and SR of the phantom study, as digests and figures."""
    written = write_study(SEED, folder, phases=(Phase.ARTERIAL,), grid=GRID).series[0]
    files = written.files
    instances = []
    for seq, path in enumerate(files):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        instances.append(Instance(seq, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPClassUID, path))
    processed = process_study(instances, NodeConfig(), PhantomLabels(written), ResultUids("identical-results"))
    assert processed.measurements is not None and processed.results is not None and processed.results.seg is not None, processed.verdict
    masks = hashlib.sha256()
    for side, kidney in sorted(processed.measurements.kidneys.items()):
        masks.update(f"{side} {[(s.start, s.stop) for s in kidney.box]}".encode())
        masks.update(np.packbits(kidney.cortex_in_box).tobytes() + np.packbits(kidney.medulla_in_box).tobytes())
    volumes = {k: v for k, v in processed.measurements.summary().items() if k.endswith("_ml") or k.endswith("_hu")}
    hu = load_series(files).hu
    reduction = reduced(hu, np.round(np.array(hu.shape) * np.array(GRID.spacing[::-1]) / MODEL_SPACING).astype(int))
    return {
        "verdict": processed.verdict,
        "reduced": hashlib.sha256(reduction.tobytes()).hexdigest(),
        "volumes": volumes,
        "masks": masks.hexdigest(),
        "seg": _digest(processed.results.seg),
        "sr": _digest(processed.results.sr),
    }


@pytest.mark.slow
def test_a_thin_slice_phantom_gives_the_recorded_masks_volumes_seg_and_sr(tmp_path: Path) -> None:
    recorded = json.loads(RECORD.read_text())
    found = fingerprint(tmp_path)
    assert found["volumes"] == recorded["volumes"]
    assert found == recorded


def test_image_library_is_highdicoms() -> None:
    """The SR's fast Image Library equals highdicom's, on a real series (whose slices differ in position only) and on
    a mix of two series with their own frames of reference."""
    real = [pydicom.dcmread(path, stop_before_pixels=True) for path in sorted((REAL_CT / "example_ct_dicom").iterdir())[:12]]
    for ds in real:  # these files leave SOP Class UID empty in the dataset (their File Meta Information has it)
        ds.SOPClassUID = ds.SOPClassUID or ds.file_meta.MediaStorageSOPClassUID
    small = write_study(SEED, Path(tempfile.mkdtemp()), phases=(Phase.ARTERIAL,), grid=Grid.centred(32, 8.0, 4, 8.0)).series[0]
    other = [pydicom.dcmread(path, stop_before_pixels=True) for path in small.files]
    for images in (real, real[:1], [*real[:3], *other, *real[3:5]]):
        assert image_library(images) == list(hd.sr.ImageLibrary(images))[0]


if __name__ == "__main__" and "--record" in sys.argv:
    with tempfile.TemporaryDirectory() as scratch:
        RECORD.write_text(json.dumps(fingerprint(Path(scratch)), indent=2) + "\n")
    print(RECORD.read_text())


def test_warming_the_writers_reads_highdicoms_tables_before_the_first_study() -> None:
    script = (
        "from highdicom._standard_utils import get_module_attribute_map as tables\n"
        "from dicomnode.results.write import warm_writers\n"
        "assert tables.cache_info().currsize == 0\n"
        "warm_writers()\n"
        "print(tables.cache_info().currsize)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1"]  # read once, before any SEG or SR
