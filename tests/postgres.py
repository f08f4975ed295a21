"""A real PostgreSQL server for tests: Debian's binaries, a cluster in a temporary folder, listening only on a Unix
socket there, run as a non-root user (the ``postgres`` account when the tests run as root)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.peers import wait_for


def binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """``start()`` makes the cluster and a database ``dicomnode``; ``url`` is its connection string."""

    def __init__(self) -> None:
        bin_dir = binaries()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL server binaries not found (Debian package postgresql)")
        self.bin = bin_dir
        self.folder = Path(tempfile.mkdtemp(prefix="dicomnode-pg-"))  # not under pytest's root-only tmp: the server user must enter it
        self.data, self.socket = self.folder / "data", self.folder
        self.user = "postgres" if os.getuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@/dicomnode?host={self.socket}"

    def _run(self, *command: str) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        return subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        if self.user:
            shutil.chown(self.folder, self.user)
        if not self.data.exists():
            made = self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync")
            assert made.returncode == 0, made.stderr
        started = self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w",
            "-o", f"-k {self.socket} -c listen_addresses='' -c fsync=off -c max_connections=60", "start",
        )  # fmt: skip
        assert started.returncode == 0, started.stderr + (self.folder / "server.log").read_text()
        wait_for(lambda: self._run(str(self.bin / "pg_isready"), "-h", str(self.socket)).returncode == 0, 30, what="PostgreSQL to accept connections")
        self._run(str(self.bin / "createdb"), "-h", str(self.socket), "-U", "postgres", "dicomnode")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)
