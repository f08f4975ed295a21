"""``dicomnode-train finetune``: a model fine-tuned on a site's reader corrections, exported only where the gate on
held-out corrections finds it no worse. The current model is the shipped ``renal-phantom-cpu``, which measures these
phantoms within about 2 % (parenchyma Dice about 0.97), so what the reader changed is what fine-tuning must learn."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import ndimage

from dicomnode.renal import SIDES, Side
from dicomnode.segment.model import Model
from tests.peers import REPO
from tests.training_cli import cli_env
from training.cli import main
from training.evaluate_real import RealScore, SideScore, evaluate_real, truth_cases
from training.finetune import SiteCase, gate, held_out_figures, split_site_cases
from training.phantom_dicom import to_sitk
from training.phantoms import Grid, Phase, make_phantom
from training.truth_case import SIDE_CODES, TruthCase, write_truth_case

CURRENT = REPO / "models" / "renal-phantom-cpu"
#: The grid of the site cases: renal-phantom-cpu's whole field of view at about twice its pixel size.
GRID = Grid.centred(112, 3.2, 32, 5.0)
#: A short fine-tune (two epochs of 20 iterations) of renal-phantom-cpu's own 3d_cpu network.
TRAINER = "nnUNetTrainerPaper_2epochs_20it"
Reader = Callable[[np.ndarray], np.ndarray]  # the truth's parenchyma of one side -> the reader's


def grown(parenchyma: np.ndarray) -> np.ndarray:
    """A reader who draws every kidney one pixel wider all round than it is."""
    return ndimage.binary_dilation(parenchyma, np.ones((1, 3, 3), bool))


def erased(parenchyma: np.ndarray) -> np.ndarray:
    """Labels emptied on purpose: a candidate trained on them is made worse."""
    return np.zeros_like(parenchyma)


def as_drawn(parenchyma: np.ndarray) -> np.ndarray:
    return parenchyma


def write_site_case(folder: Path, seed: int, created: str, reader: Reader, cortex: bool = True, labelled: tuple[Side, ...] = SIDES) -> str:
    """A phantom with a reader's correction of the sides ``labelled``, in the layout the node keeps
    (``dicomnode/node/site_cases.py``): the reader's parenchyma, and a cortex that is it less the phantom's medulla (or
    no cortex: parenchyma drawn as 1). The node's model found both kidneys."""
    phantom = make_phantom(seed, Phase.ARTERIAL, GRID)
    labels, sides = np.zeros(phantom.labels.shape, np.uint8), np.zeros(phantom.labels.shape, np.uint8)
    volumes = {}
    for side in labelled:
        parenchyma = reader(phantom.kidney_mask(side.value, "parenchyma"))
        labels[parenchyma] = 2 if cortex else 1
        labels[parenchyma & phantom.kidney_mask(side.value, "medulla")] = 1
        sides[parenchyma] = SIDE_CODES[side]
        volumes[f"parenchyma_{side.value}"] = round(float(parenchyma.sum()) * GRID.voxel_ml, 1)
    metadata = {
        "source": "reader correction",
        "reader": "Reader^Test",
        "created": created,
        "model": {"name": "renal-phantom-cpu", "version": "test"},
        "sides_labelled": [str(side) for side in labelled],
        "complete": labelled == SIDES,
        "cortex_labelled": cortex,
        "change_ml": {},
        "volumes_ml": {"node": {}, "reader": volumes},
        "arterial": True,
    }
    image = to_sitk(phantom.image.astype(np.float32), GRID)
    name = f"site_{seed}"
    write_truth_case(TruthCase(image, to_sitk(labels, GRID), to_sitk(sides, GRID), metadata), folder, name)
    return name


def finetune(sites: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    args = ["--site-cases", str(sites), "--model", str(CURRENT), "--work", str(tmp_path / "work"), "--name", "renal-phantom-site"]
    args += ["--models", str(tmp_path / "models"), "--trainer", TRAINER, "--device", "cpu"]
    command = [sys.executable, "-m", "training.cli", "finetune", *args]
    return subprocess.run(command, capture_output=True, text=True, env=cli_env(), cwd=REPO, timeout=600)


def signed_error_pct(scores: list[RealScore]) -> float:
    """Mean (measured - reader) / reader over the kidneys, in %."""
    return float(np.mean([side.volume_error_pct for case in scores for side in case.sides]))


def test_finetune_moves_the_volumes_toward_the_readers_corrections_and_exports_the_candidate(tmp_path: Path) -> None:
    sites = tmp_path / "site"
    write_site_case(sites, 48, "20261129120000", grown, labelled=(Side.LEFT,))  # the right kidney not redrawn: not trained on
    write_site_case(sites, 49, "20261130120000", grown, cortex=False)  # parenchyma alone: not trained on
    trained = [write_site_case(sites, seed, f"202612{seed - 49:02d}120000", grown) for seed in (50, 51)]
    held_out = write_site_case(sites, 52, "20261210120000", grown)  # the newest
    result = finetune(sites, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"2 to train on, 1 held out for the gate ({held_out})" in result.stdout
    assert "left out of training, a kidney the model found not labelled by the reader: site_48" in result.stdout
    assert "left out of training, without cortex labels (renal-phantom-cpu learns cortex): site_49" in result.stdout
    assert "candidate accepted: mean |volume error|" in result.stdout

    candidate = tmp_path / "models" / "renal-phantom-site"
    card = yaml.safe_load((candidate / "model.yaml").read_text())
    current_card = yaml.safe_load((CURRENT / "model.yaml").read_text())
    assert card["training_data"] == "fine-tuned from renal-phantom-cpu on 2 site cases (reader corrections)"
    assert (card["configuration"], card["trainer"], card["licence"]) == ("3d_cpu", TRAINER, current_card.get("licence", ""))
    networks = [json.loads((folder / "plans.json").read_text())["configurations"]["3d_cpu"] for folder in (candidate, CURRENT)]
    assert networks[0] == networks[1]  # the model's own plan: the same network, spacing and patch
    recorded = card["site_finetune"]
    assert (recorded["trained_on"], recorded["held_out"]) == (trained, [held_out])
    assert (recorded["left_out_incomplete"], recorded["left_out_without_cortex"]) == (["site_48"], ["site_49"])
    assert recorded["candidate"]["volume_error_pct"] <= recorded["current"]["volume_error_pct"]
    assert (candidate / recorded["reports"]["candidate"]).read_text().startswith("# renal-phantom-site on real CT")
    gate_json = json.loads((tmp_path / "work" / "site_finetune" / "renal-phantom-site" / "gate" / "gate.json").read_text())
    assert gate_json["ok"] and gate_json["candidate"] == recorded["candidate"]

    # on the cases it was trained on, the candidate measures nearer the reader's (larger) kidneys than the model did
    cases = [case for case in truth_cases(sites) if case.case_id in trained]
    before = signed_error_pct(evaluate_real(Model.from_folder(CURRENT), cases))
    after = signed_error_pct(evaluate_real(Model.from_folder(candidate), cases))
    print(f"training cases, mean signed volume error against the reader: {before:+.1f} % before, {after:+.1f} % after")
    print(f"held out: {recorded['current']} -> {recorded['candidate']}")
    assert before < -15.0, before  # the reader grew every kidney by a pixel all round
    assert after > before + 10.0 and abs(after) < abs(before), (before, after)


def test_the_gate_refuses_a_candidate_trained_on_erased_kidneys_and_says_by_how_much(tmp_path: Path) -> None:
    sites = tmp_path / "site"
    for seed in (50, 51):
        write_site_case(sites, seed, f"202612{seed - 49:02d}120000", erased)
    write_site_case(sites, 52, "20261210120000", as_drawn)
    files = sorted(p for p in CURRENT.rglob("*") if p.is_file())
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]

    result = finetune(sites, tmp_path)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    said = r"candidate refused: mean \|volume error\| ([\d.]+) % against ([\d.]+) % for renal-phantom-cpu, ([\d.]+) points worse on 1 held-out"
    refused = re.search(said, result.stdout)
    assert refused, result.stdout[-3000:]
    print(next(line for line in result.stdout.splitlines() if line.startswith("candidate refused")))
    candidate, current, worse = (float(g) for g in refused.groups())
    assert current < 5.0 and worse > 20.0 and worse == pytest.approx(candidate - current, abs=0.11)
    assert f"nothing exported; {CURRENT} is as it was" in result.stdout
    assert not (tmp_path / "models").exists()
    assert sorted(p for p in CURRENT.rglob("*") if p.is_file()) == files
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in files] == digest
    report = tmp_path / "work" / "site_finetune" / "renal-phantom-site" / "gate"
    assert not json.loads((report / "gate.json").read_text())["ok"]
    assert (report / "current" / "real_ct.md").exists() and (report / "candidate" / "real_ct.md").exists()


def _scores(case_id: str, *sides: tuple[float, float]) -> RealScore:
    """A held-out case's scores: (reference ml, measured ml) per side, left first."""
    scored = [SideScore(side, 0.9, reference, measured) for side, (reference, measured) in zip(("left", "right"), sides, strict=False)]
    return RealScore(case_id, "reader", scored, 0.0, 0.0, "", [], [], 0.0)


def test_gate_lets_the_candidate_be_worse_by_the_tolerance_and_no_more() -> None:
    current = held_out_figures("current", [_scores("a", (100.0, 104.0), (0.0, 3.0)), _scores("b", (50.0, 49.0))])
    candidate = held_out_figures("candidate", [_scores("a", (100.0, 106.0), (0.0, 0.0)), _scores("b", (50.0, 52.0))])
    assert (current.kidneys, current.volume_error_pct, candidate.volume_error_pct) == (2, 3.0, 5.0)  # the kidney-free side is not counted
    refused = gate(current, candidate, 1.9)
    assert not refused.ok and refused.worse_by == 2.0
    assert refused.reason.startswith("candidate refused: mean |volume error| 5.0 % against 3.0 % for current, 2.0 points worse on 2 held-out")
    assert gate(current, candidate, 2.0).ok and gate(candidate, current).ok
    assert "2.0 points better" in gate(candidate, current).reason
    with pytest.raises(ValueError, match="^tolerance_pct: "):
        gate(current, candidate, -1.0)
    with pytest.raises(ValueError, match="^candidate: "):
        gate(current, held_out_figures("candidate", [_scores("a", (100.0, 106.0), (0.0, 0.0))]))
    with pytest.raises(ValueError, match="^scores: "):
        held_out_figures("current", [_scores("c", (0.0, 5.0))])


def test_split_holds_out_the_newest_and_trains_only_on_complete_cases_with_cortex() -> None:
    drawn = (("c", "3", True, True), ("a", "1", True, False), ("d", "4", False, True), ("e", "0", False, True), ("b", "2", True, True))
    cases = [SiteCase(name, Path("."), created, complete, cortex) for name, created, complete, cortex in drawn]
    split = split_site_cases(cases, 2)
    assert [[c.name for c in part] for part in (split.training, split.incomplete, split.without_cortex, split.held_out)] == [["b"], ["e"], ["a"], ["c", "d"]]
    with pytest.raises(ValueError, match=r"^site_cases: none of the 2 cases left to train on .* \(1 incomplete, 1 without cortex\)"):
        split_site_cases(cases, 3)


def test_site_cases_are_scored_on_the_sides_and_structures_the_reader_drew_in_their_phase(tmp_path: Path) -> None:
    write_site_case(tmp_path, 50, "1", as_drawn, cortex=False, labelled=(Side.LEFT,))
    metadata = json.loads((tmp_path / "site_50.json").read_text())
    (tmp_path / "site_50.json").write_text(json.dumps({**metadata, "arterial": False}))
    case = truth_cases(tmp_path)[0]
    assert (case.cortex, case.arterial, case.reference) == (None, False, "reader correction by Reader^Test")
    assert (case.left, case.right) == (tmp_path / "site_50_left_parenchyma.nii.gz", None)


@pytest.mark.parametrize(
    ("cases", "holdout", "said"),
    [
        (None, "1", "argument --site-cases: {sites} is not a folder"),
        (0, "1", "argument --site-cases: no site cases in {sites} (NAME.json beside NAME.nii.gz and NAME_labels.nii.gz)"),
        (2, "2", "argument --holdout: 2 of 2 site cases; hold out at least 1 and leave at least 1 to train on"),
    ],
)
def test_bad_input_is_refused_in_one_line_naming_the_argument(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], cases: int | None, holdout: str, said: str
) -> None:
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer", "nnUNet_def_n_proc", "nnUNet_n_proc_DA"):
        monkeypatch.delenv(name, raising=False)  # restored afterwards: the CLI sets them for its work folder
    sites = tmp_path / "site"
    if cases is not None:
        sites.mkdir()
        for seed in range(50, 50 + cases):
            write_site_case(sites, seed, str(seed), as_drawn)
    argv = ["finetune", "--site-cases", str(sites), "--model", str(CURRENT), "--work", str(tmp_path / "work"), "--name", "x"]
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--models", str(tmp_path / "models"), "--holdout", holdout, "--device", "cpu"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"dicomnode-train finetune: error: {said.format(sites=sites)}\n"
    assert not (tmp_path / "models").exists()
