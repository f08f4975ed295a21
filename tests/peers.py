"""Real DICOM peers for tests: Orthanc (Debian package), dcmtk tools, dciodvfy, and the node as a process."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from dicomnode.config import NodeConfig
from dicomnode.intake.receive import Receiver
from dicomnode.outbound.commitment import Commitments
from dicomnode.store import Store
from dicomnode.store.open_associations import OpenAssociations

REPO = Path(__file__).resolve().parent.parent
#: The shared data beside the checkout (real CT, KiTS19 labels); tests that need it skip when it is absent.
#: ``DICOMNODE_SHARED`` points elsewhere (a missing folder shows which tests would skip).
SHARED = Path(os.environ.get("DICOMNODE_SHARED", REPO.parent / "shared"))
REAL_CT = SHARED / "data" / "real_ct"
#: Debian's orthanc-dicomweb package (installed by scripts/install-system.sh).
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
#: Environment of the dcmtk and Orthanc peers: Debian's builds keep Nagle's algorithm on unless TCP_NODELAY is set,
#: which throttles them to about 22 images/s on loopback; every peer runs at its best.
PEER_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail the test with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def echoscu(port: int, called: str, calling: str = "ECHOSCU") -> bool:
    result = subprocess.run(["echoscu", "-aet", calling, "-aec", called, "127.0.0.1", str(port)], capture_output=True, env=PEER_ENV)
    return result.returncode == 0


def storescu(port: int, called: str, files: list[Path], calling: str = "STORESCU", extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Send files with dcmtk storescu (one association); ``-R`` offers only the needed contexts."""
    return subprocess.run(
        ["storescu", "-R", "-aet", calling, "-aec", called, *extra, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=600,
        env=PEER_ENV,
    )


def dciodvfy(path: Path) -> list[str]:
    """Error and warning lines dciodvfy reports for a file: the node's objects must have neither."""
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith(("Error", "Warning"))]


@dataclass
class Orthanc:
    """An Orthanc server on loopback ports with its own storage folder."""

    folder: Path
    aet: str = "ORTHANC"
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    modalities: dict[str, list] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)  # extra Orthanc configuration
    dicomweb: bool = False  # load Debian's orthanc-dicomweb plugin: DICOMweb under /dicom-web/
    user: tuple[str, str] | None = None  # HTTP basic authentication required, with this one user
    process: subprocess.Popen | None = None

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "test-pacs",
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": self.user is not None,
            "RegisteredUsers": dict([self.user]) if self.user else {},
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False,
            "DicomModalities": self.modalities,
            "Plugins": [DICOMWEB_PLUGIN] if self.dicomweb else [],
            "DicomWeb": {"Enable": self.dicomweb, "Root": "/dicom-web/"},
            "StableAge": 1,
            **self.settings,
        }
        (self.folder / "orthanc.json").write_text(json.dumps(config))
        log = open(self.folder / "orthanc.log", "ab")
        self.process = subprocess.Popen(["Orthanc", str(self.folder / "orthanc.json")], stdout=log, stderr=log, env=PEER_ENV)
        wait_for(self._alive, 60, what="Orthanc to start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None

    def _alive(self) -> bool:
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def _request(self, path: str, data: bytes | None = None) -> urllib.request.Request:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data, method="POST" if data is not None else "GET")
        if self.user:
            request.add_header("Authorization", "Basic " + base64.b64encode(":".join(self.user).encode()).decode())
        return request

    def get(self, path: str):
        with urllib.request.urlopen(self._request(path), timeout=10) as response:
            body = response.read()
        return json.loads(body) if response.headers.get_content_type() == "application/json" else body

    def post(self, path: str, data: bytes | dict):
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        with urllib.request.urlopen(self._request(path, body), timeout=600) as response:
            return json.loads(response.read() or b"null")

    def upload(self, files: list[Path]) -> None:
        for path in files:
            self.post("/instances", path.read_bytes())

    def instances_of_modality(self, modality: str) -> list[str]:
        return self.post("/tools/find", {"Level": "Instance", "Query": {"Modality": modality}})

    def download(self, instance_id: str, target: Path) -> Path:
        target.write_bytes(self.get(f"/instances/{instance_id}/file"))
        return target


@dataclass
class NodeProcess:
    """``dicomnode serve`` as a separate process with a test configuration."""

    folder: Path
    destinations: list[dict]
    model_folder: Path = REPO / "models"
    model_name: str = field(default_factory=lambda: yaml.safe_load((REPO / "config.yaml").read_text())["model"]["name"])
    port: int = field(default_factory=free_port)
    ae_title: str = "RENALNODE"
    web_port: int = field(default_factory=free_port)
    role: str = "all"  # serve --role
    extra: dict = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def config_path(self) -> Path:
        return self.folder / "config.yaml"

    def write_config(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "ae_title": self.ae_title,
            "host": "127.0.0.1",
            "port": self.port,
            "storage": "storage",
            "database": "node.sqlite",
            "results": "results",
            "quiet_period_s": 2,
            "tick_s": 0.5,
            "min_free_disk_mb": 50,
            "web": {"port": self.web_port},
            "model": {"folder": str(self.model_folder), "name": self.model_name, "device": "cpu"},
            "delivery": {"max_attempts": 50, "backoff_s": 1, "max_backoff_s": 2, "timeout_s": 10},
            "destinations": self.destinations,
            **self.extra,
        }
        self.config_path.write_text(yaml.safe_dump(config))

    def start(self) -> None:
        self.write_config()
        path = self.folder / "node.log"
        self._log_offset = path.stat().st_size if path.exists() else 0
        log = open(path, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "dicomnode.node.cli", "--config", str(self.config_path), "serve", "--role", self.role]
        self.process = subprocess.Popen(command, stdout=log, stderr=log, env=env)
        wait_for(lambda: self.process.poll() is not None or f"role {self.role} started" in self.log(), 180, 0.2, what=f"the node ({self.role}) to start")
        assert self.process.poll() is None, f"node exited: {self.log()[-3000:]}"

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)  # a stopped process must run to end
            self.process.send_signal(sig)
            self.process.wait(timeout=60)
            self.process = None

    def log(self) -> str:
        """This node's log since its last start."""
        path = self.folder / "node.log"
        if not path.exists():
            return ""
        with open(path, "rb") as handle:
            handle.seek(getattr(self, "_log_offset", 0))
            return handle.read().decode(errors="replace")

    def jobs(self) -> list[dict]:
        """The job table, read directly (fast enough to poll while the node works)."""
        import sqlite3

        if str(self.extra.get("database", "")).startswith("postgresql://"):
            import psycopg
            from psycopg.rows import dict_row

            with psycopg.connect(self.extra["database"], row_factory=dict_row) as conn:
                return conn.execute("SELECT * FROM jobs ORDER BY id").fetchall()
        db = self.folder / "node.sqlite"
        if not db.exists():
            return []
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(row) for row in conn.execute("SELECT * FROM jobs ORDER BY id")]

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dicomnode.node.cli", "--config", str(self.config_path), *args], capture_output=True, text=True)

    def report(self) -> dict:
        """``dicomnode status --json``: jobs with their deliveries, waiting studies, refused instances."""
        result = subprocess.run(
            [sys.executable, "-m", "dicomnode.node.cli", "--config", str(self.config_path), "status", "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(result.stdout)

    def status(self) -> list[dict]:
        """The jobs of ``status --json``, each with its deliveries."""
        return self.report()["jobs"]


#: What the ``node_process`` fixture gives: ``NodeProcess``'s constructor, with every node stopped at teardown.
NodeFactory = Callable[..., NodeProcess]


@contextmanager
def receiver_in_process(folder: Path, **settings: Any) -> Iterator[tuple[NodeConfig, Store]]:
    """The node's receiver alone, in this process, on a free port, storing under ``folder``; ``settings`` override
    NodeConfig's defaults."""
    config = replace(NodeConfig(), port=free_port(), storage=str(folder / "storage"), base_dir=folder, **settings)
    store = Store(folder / "node.sqlite")
    receiver = Receiver(config, store, OpenAssociations(store, "test"), Commitments(config, store))
    receiver.start()
    try:
        yield config, store
    finally:
        receiver.stop()
        store.close()


def tools_missing() -> list[str]:
    return [tool for tool in ("Orthanc", "storescu", "echoscu", "dciodvfy") if shutil.which(tool) is None]


def make_certificates(folder: Path, names: tuple[str, ...]) -> dict[str, tuple[Path, Path]]:
    """A throwaway CA (``ca``) and a key and certificate signed by it for each name: {name: (key, cert)}."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca")
    paths = {"ca": (folder / "ca.key", folder / "ca.pem")}
    for name in names:
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", f"{name}.pem", "-days", "2")
        paths[name] = (folder / f"{name}.key", folder / f"{name}.pem")
    return paths
