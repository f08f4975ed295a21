"""The node's own DICOM Upper Layer against real peers (dcmtk storescu and dcmftest, pynetdicom) and against raw
sockets for what no well-behaved peer sends: fragments, transfer syntaxes, per-context answers, Error Comments,
garbage, a sender cut off mid-instance and a silent peer."""

from __future__ import annotations

import select
import socket
import struct
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from dicomnode.config import NodeConfig
from dicomnode.intake.receive import StoreStatus
from tests.peers import echoscu, receiver_in_process, storescu
from training.phantom_dicom import write_study
from training.phantoms import Grid, Phase

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")


@pytest.fixture()
def node(tmp_path: Path):
    with receiver_in_process(tmp_path, network_timeout_s=1.0) as running:
        yield running


@pytest.fixture(scope="module")
def slice_file(tmp_path_factory) -> Path:
    study = write_study(82, tmp_path_factory.mktemp("s"), phases=(Phase.ARTERIAL,), grid=Grid.centred(64, 4.0, 2, 5.0))
    return study.series[0].files[0]


def _stored(config: NodeConfig) -> list[Path]:
    return [p for p in Path(config.storage).rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    "options, transfer_syntax",
    [
        (("--max-send-pdu", "4096"), ExplicitVRLittleEndian),  # 8 KiB of pixels in three fragments and more
        (("-xi",), ImplicitVRLittleEndian),
        (("-xd",), "1.2.840.10008.1.2.1.99"),
    ],
)
def test_storescu_data_sets_are_stored_unchanged_in_the_negotiated_syntax(node, slice_file: Path, options: tuple[str, ...], transfer_syntax: str) -> None:
    config, store = node
    sent = storescu(config.port, config.ae_title, [slice_file], calling="SCANNER", extra=options)
    assert sent.returncode == 0, sent.stderr
    [stored] = _stored(config)
    assert subprocess.run(["dcmftest", str(stored)], capture_output=True, text=True).stdout.startswith("yes")  # a DICOM Part 10 file
    ds, original = pydicom.dcmread(stored), pydicom.dcmread(slice_file)
    assert ds.file_meta.TransferSyntaxUID == transfer_syntax and ds.file_meta.SourceApplicationEntityTitle == "SCANNER"
    assert ds.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
    assert ds.PixelData == original.PixelData and ds.ImagePositionPatient == original.ImagePositionPatient
    assert store.has_instance(original.SOPInstanceUID)


def test_each_proposed_context_gets_its_own_answer(node) -> None:
    config, _ = node
    ae = AE(ae_title="SCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(CTImageStorage, "1.2.3.4.5.6")
    assoc = ae.associate("127.0.0.1", config.port, ae_title=config.ae_title)
    try:
        assert assoc.is_established
        assert [(c.abstract_syntax, c.transfer_syntax[0]) for c in assoc.accepted_contexts] == [(CTImageStorage, ExplicitVRLittleEndian)]
        assert sorted((c.abstract_syntax, c.result) for c in assoc.rejected_contexts) == [(CTImageStorage, 0x04), (MRImageStorage, 0x03)]
    finally:
        assoc.release()
    assert assoc.is_released


def test_a_refused_instance_carries_its_reason_in_the_error_comment(node, slice_file: Path) -> None:
    config, store = node
    ds = pydicom.dcmread(slice_file)
    ds.SeriesInstanceUID = "1.2.03"
    ae = AE(ae_title="SCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", config.port, ae_title=config.ae_title)
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert status.Status == StoreStatus.CANNOT_UNDERSTAND
    assert status.ErrorComment == "invalid SeriesInstanceUID"
    assert _stored(config) == [] and "leading zeros" in store.refusals()[-1]["reason"]


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def _pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBL", kind, 0, len(body)) + body


def _associate_rq(called: str) -> bytes:
    """An A-ASSOCIATE-RQ proposing CT Image Storage in explicit VR little endian as context 1 (PS3.8 9.3.2)."""
    context = _item(0x20, bytes((1, 0, 0, 0)) + _item(0x30, CTImageStorage.encode()) + _item(0x40, ExplicitVRLittleEndian.encode()))
    user = _item(0x50, _item(0x51, struct.pack(">L", 16384)) + _item(0x52, b"1.2.3.4"))
    fixed = struct.pack(">HH", 1, 0) + called.encode().ljust(16) + b"RAWSCU".ljust(16) + bytes(32)
    return _pdu(0x01, fixed + _item(0x10, b"1.2.840.10008.3.1.1.1") + context + user)


def _c_store_rq(sop_instance: str, sop_class: str = CTImageStorage) -> bytes:
    def element(element: int, value: bytes) -> bytes:
        return struct.pack("<HHL", 0, element, len(value)) + value

    def uid(value: str) -> bytes:
        return value.encode() + b"\0" * (len(value) % 2)

    body = element(0x0002, uid(sop_class)) + element(0x0100, struct.pack("<H", 1)) + element(0x0110, struct.pack("<H", 7))
    body += element(0x0700, struct.pack("<H", 0)) + element(0x0800, struct.pack("<H", 0)) + element(0x1000, uid(sop_instance))
    command = element(0x0000, struct.pack("<L", len(body))) + body
    return _pdu(0x04, struct.pack(">LBB", len(command) + 2, 1, 0x03) + command)


def _connect(config: NodeConfig) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", config.port), timeout=10)
    return sock


def _answer(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_sender_cut_off_mid_instance_leaves_nothing_behind_and_the_next_is_stored(node, slice_file: Path) -> None:
    config, store = node
    sock = _connect(config)
    sock.sendall(_associate_rq(config.ae_title))
    assert sock.recv(1)[0] == 0x02  # A-ASSOCIATE-AC
    data = slice_file.read_bytes()
    sock.sendall(_c_store_rq("1.2.3.4.5") + _pdu(0x04, struct.pack(">LBB", 4000 + 2, 1, 0x00) + data[200:4200]))
    time.sleep(0.3)
    assert [p.parent.name for p in _stored(config)] == [".incoming"]  # being written
    sock.close()  # the sender dies
    deadline = time.monotonic() + 5
    while _stored(config) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _stored(config) == [] and not store.has_instance("1.2.3.4.5")
    assert storescu(config.port, config.ae_title, [slice_file]).returncode == 0
    assert len(_stored(config)) == 1


def _status(response: bytes) -> int:
    """(0000,0900) of the command set in a P-DATA-TF holding one whole command."""
    command, offset = response[12:], 0
    while offset < len(command):
        _, element, length = struct.unpack_from("<HHL", command, offset)
        if element == 0x0900:
            return int(struct.unpack_from("<H", command, offset + 8)[0])
        offset += 8 + length
    raise AssertionError("no status in the response")


def test_a_data_set_sent_on_another_sop_class_context_is_refused(node, slice_file: Path) -> None:
    config, store = node
    sock = _connect(config)
    sock.sendall(_associate_rq(config.ae_title))
    accept = sock.recv(6)
    sock.recv(struct.unpack(">L", accept[2:6])[0], socket.MSG_WAITALL)
    data = slice_file.read_bytes()[200:1200]
    sock.sendall(_c_store_rq("1.2.3.4.6", str(MRImageStorage)) + _pdu(0x04, struct.pack(">LBB", len(data) + 2, 1, 0x02) + data))
    header = sock.recv(6, socket.MSG_WAITALL)
    assert header[0] == 0x04 and _status(header + sock.recv(struct.unpack(">L", header[2:6])[0], socket.MSG_WAITALL)) == StoreStatus.SOP_CLASS_NOT_SUPPORTED
    sock.close()
    assert _stored(config) == [] and not store.has_instance("1.2.3.4.6")


@pytest.mark.parametrize(
    "sent, reason",
    [
        (_pdu(0x09, b"junk"), 0x01),  # no such PDU type: unrecognised PDU
        (_pdu(0x04, struct.pack(">LBB", 2, 1, 0x03)), 0x02),  # P-DATA-TF before any association: unexpected PDU
        (_pdu(0x01, b"short"), 0x06),  # an A-ASSOCIATE-RQ shorter than its fixed fields: invalid parameter
    ],
)
def test_what_breaks_the_protocol_is_answered_with_an_abort(node, sent: bytes, reason: int) -> None:
    config, store = node
    sock = _connect(config)
    sock.sendall(sent)
    assert _answer(sock) == bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 2, reason))  # A-ABORT from the service provider, then closed
    sock.close()
    assert _stored(config) == []


def test_a_silent_peer_is_disconnected_after_network_timeout_s(node) -> None:
    config, _ = node
    sock = _connect(config)
    sock.sendall(_associate_rq(config.ae_title)[:20])  # half a request, then nothing
    start = time.monotonic()
    assert _answer(sock) == b""
    assert 0.9 < time.monotonic() - start < 5  # network_timeout_s=1
    sock.close()


def test_a_flood_of_idle_connections_cannot_lock_out_a_real_sender(tmp_path: Path) -> None:
    """Finding 2 of the second adversarial run: idle connections at twice max_associations made the node close every
    new connection at once. Now a new one closes the connection that has waited longest without associating."""
    with receiver_in_process(tmp_path, max_associations=1, network_timeout_s=30.0) as (config, _):
        idle = [_connect(config) for _ in range(2)]  # held open without a word
        try:
            time.sleep(0.3)
            assert echoscu(config.port, config.ae_title)
            assert _answer(idle[0]) == b""  # the oldest idle one was closed to make room
        finally:
            for sock in idle:
                sock.close()


def _trickle(sock: socket.socket, data: bytes, every_s: float, limit_s: float) -> float:
    """Send ``data`` a byte at a time; seconds until the node closes the connection (or ``limit_s``)."""
    start = time.monotonic()
    for byte in data:
        try:
            sock.sendall(bytes((byte,)))
        except OSError:
            break
        if time.monotonic() - start > limit_s:
            break
        time.sleep(every_s)
        ready, _, _ = select.select([sock], [], [], 0)
        try:
            if ready and sock.recv(65536) == b"":
                break
        except ConnectionResetError:  # closed with our bytes unread: the kernel answers with a reset
            break
    return time.monotonic() - start


def test_a_request_that_trickles_in_is_cut_off_after_network_timeout_s(node) -> None:
    """Finding 2: a connection sending a byte a second was never dropped, because the timeout applied per read."""
    config, _ = node
    with _connect(config) as sock:
        assert 0.9 < _trickle(sock, _associate_rq(config.ae_title), 0.25, 10) < 3  # network_timeout_s=1


def test_an_instance_that_trickles_in_is_cut_off_after_instance_timeout_s(tmp_path: Path, slice_file: Path) -> None:
    with receiver_in_process(tmp_path, network_timeout_s=1.0, instance_timeout_s=2.0) as (config, store):
        with _connect(config) as sock:
            sock.sendall(_associate_rq(config.ae_title))
            assert sock.recv(1)[0] == 0x02
            data = slice_file.read_bytes()[200:1200]
            sent = _c_store_rq("1.2.3.4.9") + _pdu(0x04, struct.pack(">LBB", len(data) + 2, 1, 0x02) + data)
            sock.sendall(sent[:12])  # the PDU and PDV headers at once: the instance has begun
            assert 1.4 < _trickle(sock, sent[12:], 0.25, 10) < 4  # instance_timeout_s=2, each byte within network_timeout_s
        assert not store.has_instance("1.2.3.4.9")
