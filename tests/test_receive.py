"""The receiver in process, with a pynetdicom SCU as the peer: UIDs checked by the standard, the called AE title
checked, the number of associations bounded; every refusal logged and recorded, nothing written for it."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from dicomnode.config import NodeConfig
from dicomnode.intake.receive import Receiver, StoreStatus
from dicomnode.net.data_set import valid_uid
from dicomnode.outbound.commitment import Commitments
from dicomnode.store import Store
from dicomnode.store.open_associations import OpenAssociations
from tests.peers import NodeFactory, free_port, receiver_in_process, storescu
from training.phantom_dicom import write_study
from training.phantoms import Grid, Phase

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the invalid UIDs are the point


@pytest.fixture()
def node(tmp_path: Path):
    with receiver_in_process(tmp_path, max_associations=2) as running:
        yield running


@pytest.fixture(scope="module")
def slice_file(tmp_path_factory) -> Path:
    study = write_study(81, tmp_path_factory.mktemp("s"), phases=(Phase.ARTERIAL,), grid=Grid.centred(32, 10.0, 2, 5.0))
    return study.series[0].files[0]


def _scu(calling: str = "SCU") -> AE:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, pydicom.uid.ExplicitVRLittleEndian)
    return ae


def _store(config: NodeConfig, ds: pydicom.Dataset) -> int:
    assoc = _scu().associate("127.0.0.1", config.port, ae_title=config.ae_title)
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


@pytest.mark.parametrize(
    "uid, why",
    [("1.2.840." + "1" * 300, "more than 64"), ("1.2.0840.5", "leading zeros"), ("1.2..3", "digits and dots"), ("1.2.3a", "digits and dots")],
)
def test_invalid_uid_is_refused_and_nothing_is_written(node, slice_file: Path, uid: str, why: str) -> None:
    config, store = node
    ds = pydicom.dcmread(slice_file)
    ds.StudyInstanceUID = uid
    assert _store(config, ds) == StoreStatus.CANNOT_UNDERSTAND
    assert [p for p in Path(config.storage).rglob("*") if p.is_file()] == []  # .incoming emptied too
    assert why in store.refusals()[-1]["reason"] and "StudyInstanceUID" in store.refusals()[-1]["reason"]


def test_valid_instance_is_stored(node, slice_file: Path) -> None:
    config, store = node
    ds = pydicom.dcmread(slice_file)
    assert _store(config, ds) == StoreStatus.SUCCESS and store.has_instance(ds.SOPInstanceUID)


def test_uid_validator_returns_a_reason() -> None:
    assert valid_uid("1.2.840.10008.1.2") == (True, "")
    assert valid_uid("1.2.0.3") == (True, "")  # a single zero is a valid component
    assert valid_uid("") == (False, "missing")


def test_wrong_called_ae_title_is_refused_and_logged(node, caplog) -> None:
    config, store = node
    with caplog.at_level(logging.WARNING, logger="dicomnode.intake.receive"):
        assoc = _scu("ROUTER").associate("127.0.0.1", config.port, ae_title="SOMEONEELSE")
        assert assoc.is_rejected
    assert "'SOMEONEELSE' is not this node's 'RENALNODE'" in store.refusals()[-1]["reason"]
    assert any("refused an association from ROUTER" in r.getMessage() for r in caplog.records)


def test_associations_beyond_the_limit_are_refused_and_logged(node) -> None:
    config, store = node
    held = [_scu(f"SCU{k}").associate("127.0.0.1", config.port, ae_title=config.ae_title) for k in range(2)]
    try:
        assert all(a.is_established for a in held)
        extra = _scu("SCU9").associate("127.0.0.1", config.port, ae_title=config.ae_title)
        assert extra.is_rejected
        assert "more than max_associations=2" in store.refusals()[-1]["reason"]
    finally:
        for assoc in held:
            assoc.release()


def test_an_instance_above_max_instance_mb_is_refused_and_nothing_kept(tmp_path: Path, slice_file: Path) -> None:
    with receiver_in_process(tmp_path, max_instance_mb=1) as (config, store):
        ds = pydicom.dcmread(slice_file)
        ds.Rows = ds.Columns = 1024
        ds.PixelData = bytes(1024 * 1024 * 2)  # 2 MB
        assert _store(config, ds) == StoreStatus.OUT_OF_RESOURCES
        assert "above max_instance_mb=1" in store.refusals()[-1]["reason"]
        assert [p for p in Path(config.storage).rglob("*") if p.is_file()] == []


def _peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_a_large_instance_goes_to_disk_not_to_memory(tmp_path: Path, slice_file: Path, node_process: NodeFactory) -> None:
    ds = pydicom.dcmread(slice_file)
    ds.Rows = ds.Columns = 12000
    ds.PixelData = bytes(12000 * 12000 * 2)  # 275 MiB
    big = tmp_path / "big.dcm"
    ds.save_as(big)
    del ds
    node = node_process(tmp_path / "node", [])
    node.start()
    before = _peak_rss_mb(node.process.pid)
    sent = storescu(node.port, node.ae_title, [big])
    assert sent.returncode == 0, sent.stderr
    stored = list((node.folder / "storage").rglob("*.dcm"))
    assert [p for p in stored if ".incoming" not in p.parts] and stored[0].stat().st_size > 270 * 2**20
    assert _peak_rss_mb(node.process.pid) - before < 100, "the node held the instance in memory"


def test_stored_instances_the_index_lost_are_indexed_again_at_start(tmp_path: Path, slice_file: Path) -> None:
    ds = pydicom.dcmread(slice_file, stop_before_pixels=True)
    stored = tmp_path / "storage" / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
    stored.parent.mkdir(parents=True)
    stored.write_bytes(slice_file.read_bytes())  # fsynced and acknowledged; its index row lost with a power cut
    config = replace(NodeConfig(), port=free_port(), storage=str(tmp_path / "storage"), base_dir=tmp_path)
    store = Store(tmp_path / "node.sqlite")
    Receiver(config, store, OpenAssociations(store, "test"), Commitments(config, store))
    assert store.has_instance(str(ds.SOPInstanceUID))
    assert [i.path for i in store.study_instances(str(ds.StudyInstanceUID), 10**9)] == [stored]
    assert Receiver(config, store, OpenAssociations(store, "test"), Commitments(config, store)).reindex() == 0  # nothing twice
    store.close()
