"""Fixtures for real peers: each is started by the test that needs it and stopped at teardown, whatever happened."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers import NodeFactory, NodeProcess, Orthanc


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """An Orthanc PACS (not started: tests set its modalities first), stopped at teardown."""
    pacs = Orthanc(tmp_path / "orthanc")
    yield pacs
    pacs.stop()


@pytest.fixture
def more_orthancs(tmp_path: Path) -> Iterator[Callable[..., Orthanc]]:
    """Makes further Orthanc PACS (``Orthanc``'s arguments after the folder name); every one stopped at teardown."""
    made: list[Orthanc] = []

    def make(name: str, **kwargs: Any) -> Orthanc:
        made.append(Orthanc(tmp_path / name, **kwargs))
        return made[-1]

    yield make
    for pacs in made:
        pacs.stop()


@pytest.fixture
def node_process() -> Iterator[NodeFactory]:
    """Makes ``dicomnode serve`` processes (``NodeProcess``'s arguments); every one is stopped at teardown."""
    made: list[NodeProcess] = []

    def make(*args: Any, **kwargs: Any) -> NodeProcess:
        made.append(NodeProcess(*args, **kwargs))
        return made[-1]

    yield make
    for node in made:
        node.stop()
