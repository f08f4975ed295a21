"""What the second adversarial run against the node's receiver found (issue "Reliability, round 3"), each finding
tried again over a raw socket or with a real peer: data sets that contradict themselves or their command, and the
same instance from two associations at once."""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGLosslessSV1, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from dicomnode.config import NodeConfig
from dicomnode.intake.receive import StoreStatus
from tests.peers import receiver_in_process
from tests.test_acceptor import _associate_rq, _c_store_rq, _item, _pdu, _status
from training.phantom_dicom import write_study
from training.phantoms import Grid, Phase

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture()
def node(tmp_path: Path):
    with receiver_in_process(tmp_path, network_timeout_s=5.0) as running:
        yield running


@pytest.fixture(scope="module")
def slice_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_study(83, tmp_path_factory.mktemp("s"), phases=(Phase.ARTERIAL,), grid=Grid.centred(32, 8.0, 2, 5.0)).series[0].files[0]


def _encoded(ds: pydicom.Dataset, implicit: bool = False) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, implicit
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _send(config: NodeConfig, command_uid: str, data: bytes, command_class: str = CTImageStorage) -> int:
    """One C-STORE over a raw association (CT Image Storage, explicit VR little endian); the status it gets."""
    with socket.create_connection(("127.0.0.1", config.port), timeout=10) as sock:
        sock.sendall(_associate_rq(config.ae_title))
        accept = sock.recv(6, socket.MSG_WAITALL)
        sock.recv(struct.unpack(">L", accept[2:6])[0], socket.MSG_WAITALL)
        sock.sendall(_c_store_rq(command_uid, command_class) + _pdu(0x04, struct.pack(">LBB", len(data) + 2, 1, 0x02) + data))
        header = sock.recv(6, socket.MSG_WAITALL)
        assert header[0] == 0x04, header
        return _status(header + sock.recv(struct.unpack(">L", header[2:6])[0], socket.MSG_WAITALL))


def _slice(slice_file: Path, **changes: object) -> pydicom.Dataset:
    ds = pydicom.dcmread(slice_file)
    ds.SOPInstanceUID = generate_uid()
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def test_a_whole_data_set_matching_its_command_is_stored(node, slice_file: Path) -> None:
    config, store = node
    ds = _slice(slice_file)
    assert _send(config, ds.SOPInstanceUID, _encoded(ds)) == StoreStatus.SUCCESS
    assert store.has_instance(ds.SOPInstanceUID)


def test_a_data_set_without_sop_instance_uid_is_refused_not_taken_from_the_command(node, slice_file: Path) -> None:
    """Finding 3: it was acknowledged with the command's UID, and the study then failed in the SR writer."""
    config, store = node
    command_uid = generate_uid()
    assert _send(config, command_uid, _encoded(_slice(slice_file, SOPInstanceUID=None))) == StoreStatus.CANNOT_UNDERSTAND
    assert not store.has_instance(command_uid)
    assert "SOPInstanceUID missing" in store.refusals()[-1]["reason"]


def test_a_data_set_cut_inside_its_last_element_is_refused(node, slice_file: Path) -> None:
    """Finding 4: pixel data declaring 0x7FFFFFF0 bytes with 100 sent was acknowledged."""
    config, store = node
    ds = _slice(slice_file)
    data = _encoded(ds)
    cut = data[: data.index(b"\xe0\x7f\x10\x00")] + b"\xe0\x7f\x10\x00OW\0\0" + struct.pack("<L", 0x7FFFFFF0) + bytes(100)
    assert _send(config, ds.SOPInstanceUID, cut) == StoreStatus.CANNOT_UNDERSTAND
    assert not store.has_instance(ds.SOPInstanceUID)
    assert "ends inside element (7FE0,0010)" in store.refusals()[-1]["reason"]


def test_implicit_vr_bytes_on_an_explicit_vr_context_are_refused(node, slice_file: Path) -> None:
    """Finding 4: they were stored under a File Meta saying explicit VR, a file dciodvfy cannot read."""
    config, store = node
    ds = _slice(slice_file)
    assert _send(config, ds.SOPInstanceUID, _encoded(ds, implicit=True)) == StoreStatus.CANNOT_UNDERSTAND
    assert not store.has_instance(ds.SOPInstanceUID)
    assert "VR encoding" in store.refusals()[-1]["reason"]


@pytest.mark.parametrize("differs", ["SOPInstanceUID", "SOPClassUID"])
def test_a_data_set_that_contradicts_its_command_is_refused_as_dcmtk_storescp_does(node, slice_file: Path, differs: str) -> None:
    """Finding 4: another SOP Instance UID in the command than in the data set, or an MR data set on a CT context, was
    acknowledged. storescp answers both 0xA900 (Data Set does not match SOP Class); so does the node."""
    config, store = node
    ds = _slice(slice_file, SOPClassUID=MRImageStorage) if differs == "SOPClassUID" else _slice(slice_file)
    command_uid = generate_uid() if differs == "SOPInstanceUID" else ds.SOPInstanceUID
    assert _send(config, command_uid, _encoded(ds)) == StoreStatus.DATA_SET_MISMATCH
    assert not store.has_instance(command_uid) and not store.has_instance(ds.SOPInstanceUID)


@pytest.mark.parametrize("other_series", [False, True])
def test_the_same_instances_from_two_associations_at_once_are_stored_once_as_one_sender_sent_them(node, slice_file: Path, other_series: bool) -> None:
    """Finding 5: two senders sent 60 instances with the same SOP Instance UIDs at once. In one series the index named
    one sender for 21 of them while the file held the other's content; in two series, 22 second copies stayed in
    storage, unindexed. Now each instance is stored once, in the file of the sender the index names."""
    config, store = node
    uids = [generate_uid() for _ in range(60)]
    series = {"A": generate_uid(), "B": generate_uid() if other_series else None}
    template = pydicom.dcmread(slice_file)

    def send(sender: str) -> None:
        ae = AE(ae_title=sender)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", config.port, ae_title=config.ae_title)
        assert assoc.is_established
        try:
            for uid in uids:
                ds = template.copy()
                ds.SOPInstanceUID, ds.StationName = uid, sender
                ds.SeriesInstanceUID = series[sender] or series["A"]
                assert assoc.send_c_store(ds).Status == 0
        finally:
            assoc.release()

    threads = [threading.Thread(target=send, args=(name,)) for name in ("A", "B")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = [p for p in Path(config.storage).rglob("*.dcm") if ".incoming" not in p.parts]
    assert len(stored) == 60
    rows = {r["sop_uid"]: r for r in store.db.query("SELECT sop_uid, path, calling_ae FROM instances")}
    assert set(rows) == set(uids)
    for uid, row in rows.items():
        assert pydicom.dcmread(row["path"], stop_before_pixels=True).StationName == row["calling_ae"], uid


def _request(config: NodeConfig, contexts: list[tuple[int, str, list[str]]]) -> bytes:
    """Send an A-ASSOCIATE-RQ proposing ``contexts`` (ID, abstract syntax, transfer syntaxes); the PDU answered."""
    items = b"".join(
        _item(0x20, bytes((cid, 0, 0, 0)) + _item(0x30, abstract.encode()) + b"".join(_item(0x40, ts.encode()) for ts in syntaxes))
        for cid, abstract, syntaxes in contexts
    )
    user = _item(0x50, _item(0x51, struct.pack(">L", 16384)) + _item(0x52, b"1.2.3.4"))
    fixed = struct.pack(">HH", 1, 0) + config.ae_title.encode().ljust(16) + b"RAWSCU".ljust(16) + bytes(32)
    with socket.create_connection(("127.0.0.1", config.port), timeout=10) as sock:
        sock.sendall(_pdu(0x01, fixed + _item(0x10, b"1.2.840.10008.3.1.1.1") + items + user))
        header = sock.recv(6, socket.MSG_WAITALL)
        return header + sock.recv(struct.unpack(">L", header[2:6])[0], socket.MSG_WAITALL)


def _accepted_syntax(accept: bytes) -> str:
    """The transfer syntax of the first presentation context item of an A-ASSOCIATE-AC."""
    offset = 6 + 68
    while accept[offset] != 0x21:
        offset += 4 + struct.unpack(">H", accept[offset + 2 : offset + 4])[0]
    length = struct.unpack(">H", accept[offset + 10 : offset + 12])[0]
    return accept[offset + 12 : offset + 12 + length].decode().rstrip("\0")


def test_a_lossless_syntax_is_chosen_over_a_lossy_one_proposed_first(node) -> None:
    """Finding 8: JPEG Baseline, proposed first beside lossless syntaxes in one CT context, was accepted."""
    config, _ = node
    proposed = [JPEGBaseline8Bit, JPEGLosslessSV1, ExplicitVRLittleEndian]
    assert _accepted_syntax(_request(config, [(1, CTImageStorage, proposed)])) == JPEGLosslessSV1
    assert _accepted_syntax(_request(config, [(1, CTImageStorage, [JPEGBaseline8Bit])])) == JPEGBaseline8Bit  # none lossless


@pytest.mark.parametrize(
    "contexts, why",
    [
        ([], "no presentation context"),
        ([(1 + 2 * (i % 128), CTImageStorage, [ExplicitVRLittleEndian]) for i in range(10_000)], "10000 presentation contexts"),
        ([(1, CTImageStorage, [ExplicitVRLittleEndian]), (1, MRImageStorage, [ExplicitVRLittleEndian])], "ID 1 proposed twice"),
        ([(2, CTImageStorage, [ExplicitVRLittleEndian])], "ID 2 is not an odd number"),
    ],
)
def test_a_request_whose_contexts_break_ps3_8_is_rejected_with_the_reason_recorded(node, contexts: list, why: str) -> None:
    """Finding 9: no context, 10,000 contexts or one ID twice (the later proposal won) were accepted."""
    config, store = node
    answer = _request(config, contexts)
    assert answer[0] == 0x03 and answer[7:10] == bytes((1, 1, 1))  # A-ASSOCIATE-RJ: permanent, service user, no reason given
    assert why in store.refusals()[-1]["reason"]
