"""Every setting of the node is documented in docs/configuration.md's settings table, under its dotted name."""

from __future__ import annotations

import dataclasses
import re

from dicomnode.config import NodeConfig
from tests.peers import REPO


def _keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        if f.name == "base_dir":  # the configuration file's folder, not a setting
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        keys += _keys(type(default), f"{prefix}{f.name}.") if dataclasses.is_dataclass(default) else [prefix + f.name]
    return keys


def test_every_setting_is_in_the_configuration_table() -> None:
    readme = (REPO / "docs" / "configuration.md").read_text()
    table = readme.split("## Settings", 1)[1].split("\n\n", 2)[1]
    documented = {key for row in table.splitlines() for key in re.findall(r"`([a-z_.]+)`", row.split("|")[1])}
    assert [key for key in _keys(NodeConfig) if key not in documented] == []
