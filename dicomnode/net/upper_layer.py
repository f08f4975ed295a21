"""The DICOM Upper Layer protocol (PS3.8 section 9) as an association acceptor needs it: the PDUs a requestor sends
are read one at a time, P-DATA values fragment by fragment so that no data set is held in memory, and the PDUs an
acceptor answers with are encoded. Multi-byte PDU fields are big endian (PS3.8 9.3.1)."""

from __future__ import annotations

import enum
import math
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

#: PS3.7 Annex A.2.1: the one application context name DICOM defines.
DICOM_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
#: Largest A-ASSOCIATE-RQ read (a request proposing all 128 contexts with many transfer syntaxes stays far below).
MAX_ASSOCIATE_REQUEST = 1 << 20
#: Largest command set read; DIMSE command sets are a few hundred bytes.
MAX_COMMAND = 1 << 16


class PduType(enum.IntEnum):
    """PS3.8 Table 9-11 and following: the PDU types."""

    ASSOCIATE_RQ = 0x01
    ASSOCIATE_AC = 0x02
    ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    RELEASE_RQ = 0x05
    RELEASE_RP = 0x06
    ABORT = 0x07


class ItemType(enum.IntEnum):
    """PS3.8 9.3.2 and Annex D: the items and sub-items of A-ASSOCIATE-RQ and -AC used here."""

    APPLICATION_CONTEXT = 0x10
    PRESENTATION_CONTEXT_RQ = 0x20
    PRESENTATION_CONTEXT_AC = 0x21
    ABSTRACT_SYNTAX = 0x30
    TRANSFER_SYNTAX = 0x40
    USER_INFORMATION = 0x50
    MAXIMUM_LENGTH = 0x51
    IMPLEMENTATION_CLASS_UID = 0x52
    ROLE_SELECTION = 0x54
    IMPLEMENTATION_VERSION_NAME = 0x55


class ContextResult(enum.IntEnum):
    """PS3.8 Table 9-18: the result of one proposed presentation context."""

    ACCEPTANCE = 0
    USER_REJECTION = 1
    NO_REASON = 2
    ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
    TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


class Rejection(enum.Enum):
    """PS3.8 Table 9-21: (result, source, reason) of the A-ASSOCIATE-RJ this acceptor sends."""

    APPLICATION_CONTEXT_NOT_SUPPORTED = (1, 1, 2)  # permanent, service user
    CALLING_AE_NOT_RECOGNISED = (1, 1, 3)
    CALLED_AE_NOT_RECOGNISED = (1, 1, 7)
    PROTOCOL_VERSION_NOT_SUPPORTED = (1, 2, 2)  # permanent, service provider (ACSE)
    LOCAL_LIMIT_EXCEEDED = (2, 3, 2)  # transient, service provider (presentation)
    NO_REASON_GIVEN = (1, 1, 1)  # permanent, service user: a request PS3.8 does not allow (its contexts)


class AbortReason(enum.IntEnum):
    """PS3.8 Table 9-26: reasons of an A-ABORT whose source is the service provider."""

    NOT_SPECIFIED = 0
    UNRECOGNISED_PDU = 1
    UNEXPECTED_PDU = 2
    UNRECOGNISED_PDU_PARAMETER = 4
    UNEXPECTED_PDU_PARAMETER = 5
    INVALID_PDU_PARAMETER = 6


class ProtocolError(ValueError):
    """The peer broke the protocol; the association is aborted with ``reason``."""

    def __init__(self, message: str, reason: AbortReason = AbortReason.INVALID_PDU_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ProposedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class AssociateRequest:
    """What an A-ASSOCIATE-RQ asks for (PS3.8 9.3.2); ``maximum_length`` 0 means unlimited."""

    protocol_version: int
    called_ae: str
    calling_ae: str
    application_context: str
    contexts: tuple[ProposedContext, ...]
    maximum_length: int = 0
    implementation_class_uid: str = ""
    roles: tuple[tuple[str, bool, bool], ...] = ()  # SCP/SCU Role Selection (PS3.7 D.3.3.4): SOP class, SCU role, SCP role


@dataclass(frozen=True)
class ContextAnswer:
    """The acceptor's answer to one proposed context; ``transfer_syntax`` is significant only on acceptance."""

    context_id: int
    result: ContextResult
    transfer_syntax: str


@dataclass(frozen=True)
class Fragment:
    """One PDV of a P-DATA-TF (PS3.8 9.3.5.1 and Annex E.2): its value follows in the stream, ``length`` bytes."""

    context_id: int
    command: bool
    last: bool
    length: int


def _text(value: bytes | memoryview) -> str:
    """A UID or AE title from a PDU field: ASCII, padded with NUL (UIDs) or spaces (AE titles)."""
    try:
        return bytes(value).decode("ascii").strip("\0 ")
    except UnicodeDecodeError:
        raise ProtocolError(f"field {bytes(value)!r} is not ASCII") from None


def _items(data: memoryview) -> Iterator[tuple[int, memoryview]]:
    """(type, value) of each item or sub-item: type (1 byte), reserved (1), length (2), value."""
    offset = 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise ProtocolError("an item header is cut off")
        kind, length = data[offset], int.from_bytes(data[offset + 2 : offset + 4], "big")
        end = offset + 4 + length
        if end > len(data):
            raise ProtocolError(f"item 0x{kind:02x} claims {length} bytes, more than its PDU holds")
        yield kind, data[offset + 4 : end]
        offset = end


def _proposed_context(value: memoryview) -> ProposedContext:
    if len(value) < 4:
        raise ProtocolError("a presentation context item is cut off")
    abstract, transfer = "", []
    for kind, sub in _items(value[4:]):
        if kind == ItemType.ABSTRACT_SYNTAX:
            abstract = _text(sub)
        elif kind == ItemType.TRANSFER_SYNTAX:
            transfer.append(_text(sub))
    if not abstract or not transfer:
        raise ProtocolError(f"presentation context {value[0]} lacks its abstract syntax or transfer syntaxes")
    return ProposedContext(value[0], abstract, tuple(transfer))


#: PS3.8 9.3.2.2: a presentation context ID is an odd integer from 1 to 255, so a request proposes at most 128.
MAX_PROPOSED_CONTEXTS = 128


def context_problem(contexts: tuple[ProposedContext, ...]) -> str:
    """Why the proposed presentation contexts break PS3.8 9.3.2.2 ("" if they do not): none, more than 128, an even
    or out-of-range ID, or one ID proposed twice (the later proposal would silently win)."""
    if not contexts:
        return "no presentation context proposed"
    if len(contexts) > MAX_PROPOSED_CONTEXTS:
        return f"{len(contexts)} presentation contexts proposed, more than the {MAX_PROPOSED_CONTEXTS} odd IDs there are"
    ids = [c.context_id for c in contexts]
    odd = [i for i in ids if not (1 <= i <= 255 and i % 2)]
    if odd:
        return f"presentation context ID {odd[0]} is not an odd number from 1 to 255"
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        return f"presentation context ID {twice[0]} proposed twice"
    return ""


def parse_associate_request(body: bytes) -> AssociateRequest:
    """The A-ASSOCIATE-RQ whose PDU body (after the 6-byte header) is ``body``; ProtocolError if malformed."""
    data = memoryview(body)
    if len(data) < 68:
        raise ProtocolError(f"A-ASSOCIATE-RQ of {len(data)} bytes, shorter than its 68 fixed bytes")
    version = int.from_bytes(data[0:2], "big")
    called, calling = _text(data[4:20]), _text(data[20:36])
    application_context, contexts, maximum_length, implementation = "", [], 0, ""
    roles: list[tuple[str, bool, bool]] = []
    for kind, value in _items(data[68:]):
        if kind == ItemType.APPLICATION_CONTEXT:
            application_context = _text(value)
        elif kind == ItemType.PRESENTATION_CONTEXT_RQ:
            contexts.append(_proposed_context(value))
        elif kind == ItemType.USER_INFORMATION:
            for sub_kind, sub in _items(value):
                if sub_kind == ItemType.MAXIMUM_LENGTH and len(sub) == 4:
                    maximum_length = int.from_bytes(sub, "big")
                elif sub_kind == ItemType.IMPLEMENTATION_CLASS_UID:
                    implementation = _text(sub)
                elif sub_kind == ItemType.ROLE_SELECTION and len(sub) >= 4:
                    size = int.from_bytes(sub[0:2], "big")
                    if len(sub) == size + 4:
                        roles.append((_text(sub[2 : 2 + size]), bool(sub[2 + size]), bool(sub[3 + size])))
    return AssociateRequest(version, called, calling, application_context, tuple(contexts), maximum_length, implementation, tuple(roles))


def _pdu(kind: PduType, body: bytes) -> bytes:
    return struct.pack(">BBL", kind, 0, len(body)) + body


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def _uid(value: str) -> bytes:
    return value.encode("ascii")


def _ae(value: str) -> bytes:
    return value.encode("ascii")[:16].ljust(16)


def associate_accept(
    request: AssociateRequest,
    answers: list[ContextAnswer],
    maximum_length: int,
    implementation_class_uid: str,
    implementation_version: str,
    roles: tuple[tuple[str, bool, bool], ...] = (),
) -> bytes:
    """A-ASSOCIATE-AC (PS3.8 9.3.3): the AE title fields repeat the request's, as the standard asks; ``roles`` are
    the SCP/SCU Role Selection answers (SOP class, the requestor's SCU role, its SCP role)."""
    contexts = b"".join(
        _item(ItemType.PRESENTATION_CONTEXT_AC, struct.pack(">BBBB", a.context_id, 0, a.result, 0) + _item(ItemType.TRANSFER_SYNTAX, _uid(a.transfer_syntax)))
        for a in answers
    )
    user = _item(
        ItemType.USER_INFORMATION,
        _item(ItemType.MAXIMUM_LENGTH, struct.pack(">L", maximum_length))
        + _item(ItemType.IMPLEMENTATION_CLASS_UID, _uid(implementation_class_uid))
        + _item(ItemType.IMPLEMENTATION_VERSION_NAME, implementation_version.encode("ascii"))
        + b"".join(_item(ItemType.ROLE_SELECTION, struct.pack(">H", len(uid)) + uid.encode("ascii") + bytes((scu, scp))) for uid, scu, scp in roles),
    )
    fixed = struct.pack(">HH", 1, 0) + _ae(request.called_ae) + _ae(request.calling_ae) + bytes(32)
    return _pdu(PduType.ASSOCIATE_AC, fixed + _item(ItemType.APPLICATION_CONTEXT, _uid(DICOM_APPLICATION_CONTEXT)) + contexts + user)


def associate_reject(rejection: Rejection) -> bytes:
    """A-ASSOCIATE-RJ (PS3.8 9.3.4)."""
    return _pdu(PduType.ASSOCIATE_RJ, bytes((0, *rejection.value)))


def release_response() -> bytes:
    """A-RELEASE-RP (PS3.8 9.3.7)."""
    return _pdu(PduType.RELEASE_RP, bytes(4))


def abort(reason: AbortReason) -> bytes:
    """A-ABORT from the service provider (source 2, PS3.8 9.3.8)."""
    return _pdu(PduType.ABORT, bytes((0, 0, 2, reason)))


def p_data(context_id: int, command: bytes) -> bytes:
    """A P-DATA-TF holding one whole command set (message control header: command, last fragment)."""
    return _pdu(PduType.P_DATA_TF, struct.pack(">LBB", len(command) + 2, context_id, 0x03) + command)


def p_data_fragments(context_id: int, data: bytes, maximum_length: int) -> list[bytes]:
    """P-DATA-TF PDUs carrying the data set ``data`` in PDVs that fit the peer's ``maximum_length`` (0: no limit),
    the last marked last."""
    room = max(maximum_length - 6, 1024) if maximum_length else max(len(data), 1)
    pdus = []
    for start in range(0, max(len(data), 1), room):
        last = start + room >= len(data)
        control = 0x02 if last else 0x00
        chunk = data[start : start + room]
        pdus.append(_pdu(PduType.P_DATA_TF, struct.pack(">LBB", len(chunk) + 2, context_id, control) + chunk))
    return pdus


class PduReader:
    """Reads an association's PDUs from its socket, through one buffer; a read that the peer cuts off raises
    ConnectionError, one that outlasts the socket's timeout or the reader's ``deadline`` TimeoutError."""

    def __init__(self, sock: socket.socket, chunk: int = 1 << 20) -> None:
        self._sock = sock
        self._buffer = bytearray()  # received, not yet read
        self._chunk_size = chunk
        self._chunk: memoryview | None = None  # allocated with the first data set, not for every connection
        self._silence = sock.gettimeout()
        self.deadline = math.inf  # time.monotonic() by which the read under way must be done; a slow peer is cut off
        self.waiting_for = ""  # what the deadline is for, for the error

    def close(self) -> None:
        self._buffer.clear()

    def _receive(self, into: memoryview | None = None) -> int | bytes:
        """One socket read, waiting at most the socket's timeout and never past the deadline."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{self.waiting_for or 'a read'} not in within its deadline")
        self._sock.settimeout(left if self._silence is None else min(self._silence, left))
        try:
            got = self._sock.recv_into(into) if into is not None else self._sock.recv(1 << 16)
        except TimeoutError:
            if time.monotonic() >= self.deadline:
                raise TimeoutError(f"{self.waiting_for or 'a read'} not in within its deadline") from None
            raise TimeoutError(f"silent for {self._silence or 0:.0f} s") from None
        if not got:
            raise ConnectionError("the peer closed the connection")
        return got

    def read(self, length: int) -> bytes:
        while len(self._buffer) < length:
            self._buffer += cast(bytes, self._receive())
        data = bytes(self._buffer[:length])
        del self._buffer[:length]
        return data

    def header(self) -> tuple[PduType, int]:
        """The next PDU's type and length."""
        kind, _, length = struct.unpack(">BBL", self.read(6))
        try:
            return PduType(kind), length
        except ValueError:
            raise ProtocolError(f"unknown PDU type 0x{kind:02x}", AbortReason.UNRECOGNISED_PDU) from None

    def fragment(self, remaining: int) -> Fragment:
        """The header of the next PDV of a P-DATA-TF that has ``remaining`` bytes left."""
        if remaining < 6:
            raise ProtocolError("a P-DATA-TF ends inside a PDV header")
        length, context_id, control = struct.unpack(">LBB", self.read(6))
        if length < 2 or length + 4 > remaining:
            raise ProtocolError(f"a PDV of {length} bytes does not fit its P-DATA-TF ({remaining} bytes left)")
        return Fragment(context_id, bool(control & 0x01), bool(control & 0x02), length - 2)

    def copy(self, length: int, sink: Callable[[memoryview], object] | None) -> None:
        """Pass the next ``length`` bytes to ``sink`` (or drop them), a chunk at a time."""
        if self._buffer:
            buffered = bytes(self._buffer[:length])
            del self._buffer[:length]
            if sink is not None:
                sink(memoryview(buffered))
            length -= len(buffered)
        if self._chunk is None and length:
            self._chunk = memoryview(bytearray(self._chunk_size))
        while length:
            assert self._chunk is not None
            view = self._chunk[: min(length, len(self._chunk))]
            got = cast(int, self._receive(view))
            if sink is not None:
                sink(view[:got])
            length -= got
