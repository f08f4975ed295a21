"""Fixtures for real peers: each is started by the test that needs it and stopped at teardown, whatever happened."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dicomnode.store import Store
from dicomnode.store.database import Database, PostgresDatabase, SqliteDatabase
from tests.peers import NodeFactory, NodeProcess, Orthanc
from tests.postgres import PostgresServer, binaries


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


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session; each test gets its own database from ``pg_database``."""
    if binaries() is None:
        pytest.skip("PostgreSQL server not installed (scripts/install-system.sh installs it)")
    server = PostgresServer()
    server.start()
    yield server
    server.remove()


@pytest.fixture
def pg_url(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    import psycopg

    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    with psycopg.connect(postgres.url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.execute(f'CREATE DATABASE "{name}"')
    return postgres.url.replace("/dicomnode?", f"/{name}?")


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """An empty database of each kind the store supports: the contract tests run once per backend."""
    if request.param == "sqlite":
        made: Database = SqliteDatabase(tmp_path / "node.sqlite")
    else:
        made = PostgresDatabase(request.getfixturevalue("pg_url"), 5.0)
    yield made
    made.close()


@pytest.fixture
def store(database: Database) -> Store:
    """The store on each database it supports (closed with its database)."""
    return Store(database)
