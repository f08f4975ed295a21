"""DICOM TLS: storescu sends to the node over TLS, the node sends results over TLS to dcmtk storescp."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from tests.peers import NodeFactory, free_port, make_certificates, storescu, tools_missing, wait_for
from training.phantom_dicom import write_study
from training.phantoms import Grid, Phase

pytestmark = pytest.mark.skipif(bool(tools_missing()) or shutil.which("openssl") is None, reason="needs dcmtk, dciodvfy and openssl")


def test_receive_and_send_over_tls(tmp_path: Path, node_process: NodeFactory) -> None:
    certs = make_certificates(tmp_path / "pki", ("node", "scanner", "pacs"))
    study = write_study(888, tmp_path / "study", phases=(Phase.ARTERIAL,), grid=Grid.centred(160, 1.6, 24, 5.0))
    received = tmp_path / "pacs"
    received.mkdir()
    pacs_port = free_port()
    pacs = subprocess.Popen(
        ["storescp", "+tls", str(certs["pacs"][0]), str(certs["pacs"][1]), "+cf", str(certs["ca"][1]), "-aet", "TLSPACS", "-od", str(received), str(pacs_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    node = node_process(
        tmp_path / "node",
        [{"name": "pacs", "ae_title": "TLSPACS", "host": "127.0.0.1", "port": pacs_port, "tls": True}],
        extra={"tls": {"enabled": True, "certificate": str(certs["node"][1]), "private_key": str(certs["node"][0]), "ca_certificates": str(certs["ca"][1])}},
    )
    try:
        node.start()
        plain = storescu(node.port, node.ae_title, study.series[0].files[:1])
        assert plain.returncode != 0  # no TLS, no association
        tls = ("+tls", str(certs["scanner"][0]), str(certs["scanner"][1]), "+cf", str(certs["ca"][1]))
        sent = storescu(node.port, node.ae_title, study.series[0].files, extra=tls)
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: len(list(received.iterdir())) == 2, 120, 0.5, "SEG and SR at the TLS peer")
        assert sorted(pydicom.dcmread(p).Modality for p in received.iterdir()) == ["SEG", "SR"]
        wait_for(lambda: [(j["state"], j["delivery"]) for j in node.jobs()] == [("done", "delivered")], 30, 0.5, "the job to be done")
    finally:
        pacs.terminate()
        pacs.wait(timeout=10)
