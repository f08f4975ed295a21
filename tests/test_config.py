"""The shipped config.yaml loads as is; typos are refused; relative paths follow the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.config import load_config
from tests.peers import REPO


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
