"""The whole training CLI on tiny phantoms: phantoms -> import -> train -> export -> evaluate, then the node loads it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.peers import REAL_CT as REAL
from tests.training_cli import TINY, cli_env, tiny_training, training_cli
from training.phantom_dicom import write_study
from training.phantoms import Grid


def test_training_cli_round_trip(tmp_path: Path) -> None:
    env = cli_env()
    work, models = tmp_path / "work", tmp_path / "models"
    training_cli("phantoms", "--out", str(tmp_path / "train"), "--count", "6", "--seed", "10", *TINY, env=env)
    training_cli("phantoms", "--out", str(tmp_path / "test"), "--count", "4", "--seed", "90", *TINY, env=env)
    training_cli("import", "--manifest", str(tmp_path / "train" / "manifest.csv"), "--work", str(work), "--dataset-id", "990", "--name", "Tiny", env=env)
    dataset = json.loads((work / "raw" / "Dataset990_Tiny" / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "parenchyma": [1, 2], "cortex": 2}
    groups = json.loads((work / "raw" / "Dataset990_Tiny" / "groups.json").read_text())
    assert len(groups) == 6 and all(g.startswith("CKD") for g in groups.values())

    out = training_cli(*tiny_training(str(work), "990", "nnUNetTrainerPaper_1epoch_3it"), env=env)
    assert "best fold: 0" in out
    # the schedule is named in the results folder, as nnU-Net names its trainer variants
    assert (work / "results" / "Dataset990_Tiny" / "nnUNetTrainerPaper_1epoch_3it__nnUNetPlans__3d_tiny" / "fold_0" / "checkpoint_final.pth").exists()
    splits = json.loads((work / "preprocessed" / "Dataset990_Tiny" / "splits_final.json").read_text())
    assert sorted(splits[0]["train"] + splits[0]["val"]) == sorted(groups)

    card = tmp_path / "card.yaml"
    described = {"training_data": "6 tiny phantoms", "intended_use": "tests", "not_fit_for": ["patients"], "findings": {"real_ct": "untested"}}
    card.write_text(yaml.safe_dump(described))
    training_cli(
        "export",
        "--work",
        str(work),
        "--dataset-id",
        "990",
        "--configuration",
        "3d_tiny",
        "--name",
        "tiny",
        "--trainer",
        "nnUNetTrainerPaper_1epoch_3it",
        "--models",
        str(models),
        "--card",
        str(card),
        env=env,
    )
    exported = yaml.safe_load((models / "tiny" / "model.yaml").read_text())
    assert exported["trainer"] == "nnUNetTrainerPaper_1epoch_3it" and exported["fold"] == 0
    assert exported["not_fit_for"] == ["patients"] and "cross_validation" in exported["metrics"]
    assert exported["findings"] == {"real_ct": "untested"}
    assert (models / "tiny" / "fold_0" / "checkpoint_final.pth").stat().st_size < 5_000_000

    report = training_cli(
        "evaluate",
        "--model",
        str(models / "tiny"),
        "--manifest",
        str(tmp_path / "test" / "manifest.csv"),
        "--out",
        str(tmp_path / "eval"),
        "--device",
        "cpu",
        "--update-card",
        env=env,
    )
    assert "| parenchyma |" in report and "ANOVA" in report
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert len(metrics["per_case"]) == 4 and 0.0 <= metrics["mean"]["parenchyma"]["dice"] <= 1.0
    assert (tmp_path / "eval" / "bland_altman.png").stat().st_size > 10_000
    recorded = yaml.safe_load((models / "tiny" / "model.yaml").read_text())["metrics"]["evaluation"]
    assert recorded["cases"] == 4 and recorded["parenchyma_dice"] == pytest.approx(metrics["mean"]["parenchyma"]["dice"], abs=1e-4)

    if REAL.exists():  # real pixels with per-side masks: the node's own segment -> measure -> QC path, per side
        report = training_cli(
            "evaluate-real",
            "--model",
            str(models / "tiny"),
            "--image",
            str(REAL / "example_ct.nii.gz"),
            "--left",
            str(REAL / "example_ct_labels" / "kidney_left.nii.gz"),
            "--right",
            str(REAL / "example_ct_labels" / "kidney_right.nii.gz"),
            "--reference",
            "TotalSegmentator v1 (a model)",
            "--out",
            str(tmp_path / "real"),
            "--device",
            "cpu",
            "--update-card",
            env=env,
        )
        scores = json.loads((tmp_path / "real" / "real_ct.json").read_text())[0]
        assert [(s["side"], s["reference_ml"]) for s in scores["sides"]] == [("left", 138.9), ("right", 188.8)]
        assert "TotalSegmentator v1 (a model)" in report and scores["verdict"] and scores["stray_ml"] >= 0
        real = yaml.safe_load((models / "tiny" / "model.yaml").read_text())["metrics"]["real_ct"]
        assert real["cases"]["real_ct"]["stray_ml"] == scores["stray_ml"] and real["cases"]["real_ct"]["verdict"] == scores["verdict"]
        assert real["cases"]["real_ct"]["left_parenchyma"]["reference_ml"] == 138.9 and "localizer none" in real["how"]

    # The node loads the exported model by name from its configuration and runs a study with it.
    config = tmp_path / "node.yaml"
    settings = {"model": {"folder": str(models), "name": "tiny", "device": "cpu"}, "storage": "s", "database": "d.sqlite", "results": "r"}
    config.write_text(yaml.safe_dump(settings))
    study = write_study(5, tmp_path / "study", grid=Grid.centred(64, 5.6, 20, 8.0))
    result = subprocess.run(
        [sys.executable, "-m", "dicomnode.node.cli", "--config", str(config), "run", str(tmp_path / "study"), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary[study.study_uid]["series_uid"] == study.series[1].series_uid
    assert summary[study.study_uid]["outcome"] in ("result", "no_result")  # a 3-iteration model may find no kidney
