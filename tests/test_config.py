"""The shipped config.yaml loads as is; typos are refused; relative paths follow the file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dicomnode.config import load_config
from tests.peers import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def test_default_config_loads_and_names_the_shipped_model() -> None:
    config = load_config(REPO / "config.yaml")
    assert (config.port, config.ae_title) == (11112, "RENALNODE")
    assert (config.path(config.model.folder) / config.model.name / "model.yaml").exists()
    assert [d.ae_title for d in config.destinations] == ["ORTHANC"]
    assert config.path(config.storage) == REPO / "var" / "storage"


def test_unknown_settings_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("quiet_perod_s: 5\n")
    with pytest.raises(ValueError, match="quiet_perod_s"):
        load_config(path)
    path.write_text("model:\n  nmae: x\n")
    with pytest.raises(ValueError, match="nmae"):
        load_config(path)


@pytest.mark.parametrize(
    "text, named",
    [
        ("port: 99999\n", "port: 99999 is not 1-65535"),
        ("ae_title: A_TWENTY_CHAR_TITLE_\n", "ae_title: 'A_TWENTY_CHAR_TITLE_' must not exceed 16 characters"),
        ("ae_title: 'A\\B'\n", "ae_title: 'A\\\\B' holds a backslash"),
        ("ae_title: '   '\n", "ae_title: '   ' is empty"),
        (
            "destinations:\n  - {name: pacs, ae_title: A, host: h, port: 1}\n  - {name: pacs, ae_title: B, host: h, port: 2}\n",
            "the name 'pacs' is used 2 times",
        ),
        ("tls: {enabled: true, certificate: node.pem, private_key: node.key}\n", "tls.certificate: file 'node.pem' not found"),
        ("qc: {on_fail: ignore}\n", "qc.on_fail"),
        ("max_wait_s: 1\nquiet_period_s: 10\n", "max_wait_s: 1 is shorter than quiet_period_s"),
        ("port: abc\n", "port: expected an integer, got 'abc'"),
        ("check_called_ae: 'no'\n", "check_called_ae: expected true or false, got 'no'"),
        ("qc: {kidney_ml: [40]}\n", "qc.kidney_ml: too few values, got [40]"),
        ("allowed_callers: SCANNER\n", "allowed_callers: expected a list, got 'SCANNER'"),
        ("destinations:\n  - {name: pacs, ae_title: A, host: h, port: '104'}\n", "destinations[0].port: expected an integer, got '104'"),
        ("retention: {free_disk_mb: 100}\n", "retention.free_disk_mb: 100 must be above min_free_disk_mb=500"),
        ("qc: {kidney_ml: [450, 40]}\n", "qc.kidney_ml: expected [low, high] with low < high, got [450.0, 40.0]"),
        ("qc: {max_extent_mm: .inf}\n", "qc.max_extent_mm: expected a finite number, got inf"),
        ("destinations:\n  - {name: pacs, ae_title: A, host: h}\n", "destinations[0].port: 0 is not 1-65535"),
        ("destinations:\n  - {name: web, protocol: stow-rs, url: pacs.example.org}\n", "destinations[0].url: 'pacs.example.org' is not an http(s) URL"),
        ("destinations:\n  - {ae_title: A, host: h, port: 104}\n", "destinations[0].name: is required"),
        ("destinations:\n  - {name: web, protocol: ftp, url: 'ftp://pacs'}\n", "destinations[0].protocol: 'ftp' is not one of dimse, stow-rs"),
        ("destinations:\n  - {name: pacs, ae_title: A, host: h, port: 104, url: 'https://pacs'}\n", "destinations[0].url: unknown setting"),
        (
            "destinations:\n  - {name: web, protocol: stow-rs, url: 'https://pacs', storage_commitment: true}\n",
            "destinations[0].storage_commitment: unknown setting",
        ),
        ("model: {device: gpu}\n", "model.device: 'gpu' is not one of auto, cuda, cpu"),
        ("model: {external: {tile_step_size: 0}}\n", "model.external.tile_step_size: must be in (0, 1]"),
        ("base_dir: /\n", "base_dir: unknown setting"),
        ("shadow: {last_n: 0}\n", "shadow.last_n: must be at least 1, got 0"),
        ("shadow: {model: renal-synth3-cpu}\n", "shadow.model: 'renal-synth3-cpu' is the live model (model.name)"),
    ],
)
def test_wrong_values_are_refused_naming_the_setting_and_the_file(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(named)) as raised:
        load_config(path)
    assert str(raised.value).startswith(str(path))


def test_several_wrong_values_are_named_at_once_and_an_empty_key_takes_its_default(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("port: 0\nweb: {port: 70000}\nmax_wait_s: 1\n")
    with pytest.raises(ValueError) as raised:
        load_config(path)
    assert str(raised.value) == f"{path}: port: 0 is not 1-65535; web.port: 70000 is not 1-65535"  # then the checks across settings
    path.write_text("destinations:\nmodel:\nport: 104\n")
    config = load_config(path)
    assert (config.destinations, config.model.name, config.port) == ((), "renal-synth3-cpu", 104)


def test_config_option_before_or_after_the_subcommand(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("database: node.sqlite\n")
    for args in (["--config", str(path), "status"], ["status", "--config", str(path)]):  # no ./config.yaml in cwd
        result = subprocess.run([sys.executable, "-m", "dicomnode.node.cli", *args], capture_output=True, text=True, cwd=tmp_path, env=ENV)
        assert result.returncode == 0 and "no jobs yet" in result.stdout, result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("port: 0\n")
    result = subprocess.run([sys.executable, "-m", "dicomnode.node.cli", "status", "--config", str(broken)], capture_output=True, text=True, env=ENV)
    assert result.returncode != 0 and "port: 0 is not 1-65535" in result.stderr


def test_a_model_name_without_its_folder_stops_serve_naming_the_setting_and_the_folder(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("database: node.sqlite\nweb: {enabled: false}\nmodel: {name: no-such-model}\n")
    result = subprocess.run([sys.executable, "-m", "dicomnode.node.cli", "serve", "--config", str(path)], capture_output=True, text=True, env=ENV, timeout=120)
    missing = tmp_path / "models" / "no-such-model"
    assert (result.returncode, result.stderr) == (1, f"configuration error: {path}: model.name: model folder {missing} not found\n")


def test_the_cluster_deployment_example_is_a_valid_configuration() -> None:
    config = load_config(Path(__file__).resolve().parent.parent / "deploy" / "cluster.yaml")
    assert config.database.startswith("postgresql://") and config.cluster.lease_s == 60
