"""DIMSE command sets (PS3.7 section 9, 10 and Annex E) for the services this node provides: C-STORE, C-ECHO and the
Storage Commitment Push Model's N-ACTION and N-EVENT-REPORT; requests decoded, responses encoded. Command sets are
always implicit VR little endian (PS3.7 6.3.1)."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS, Status

from dicomnode.net.upper_layer import ProtocolError

#: Storage Commitment Push Model (PS3.4 J.3): its SOP class, its well-known instance, and the one action it defines.
STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, REQUEST_STORAGE_COMMITMENT = "1.2.840.10008.1.20.1", "1.2.840.10008.1.20.1.1", 1

#: (0000,0800) Command Data Set Type: this value says no data set follows; any other says one does.
NO_DATA_SET = 0x0101


class CommandField(enum.IntEnum):
    """(0000,0100) values, PS3.7 Annex E."""

    C_STORE_RQ = 0x0001
    C_STORE_RSP = 0x8001
    C_ECHO_RQ = 0x0030
    C_ECHO_RSP = 0x8030
    N_ACTION_RQ = 0x0130
    N_ACTION_RSP = 0x8130
    N_EVENT_REPORT_RQ = 0x0100
    N_EVENT_REPORT_RSP = 0x8100


class Tag(enum.IntEnum):
    """The command elements read or written here, as (group << 16) | element."""

    GROUP_LENGTH = 0x00000000
    AFFECTED_SOP_CLASS_UID = 0x00000002
    REQUESTED_SOP_CLASS_UID = 0x00000003
    COMMAND_FIELD = 0x00000100
    MESSAGE_ID = 0x00000110
    MESSAGE_ID_BEING_RESPONDED_TO = 0x00000120
    COMMAND_DATA_SET_TYPE = 0x00000800
    STATUS = 0x00000900
    ERROR_COMMENT = 0x00000902
    AFFECTED_SOP_INSTANCE_UID = 0x00001000
    REQUESTED_SOP_INSTANCE_UID = 0x00001001
    EVENT_TYPE_ID = 0x00001002
    ACTION_TYPE_ID = 0x00001008


class StoreStatus(enum.IntEnum):
    """The C-STORE and C-ECHO statuses this SCP answers, named once; pynetdicom's STORAGE_SERVICE_CLASS_STATUS (PS3.4 Table
    B.2-1) gives each its meaning, see :meth:`meaning`."""

    SUCCESS = Status.SUCCESS
    SOP_CLASS_NOT_SUPPORTED = 0x0122  # the data set's SOP class is not the one its presentation context was accepted for
    OUT_OF_RESOURCES = 0xA700  # "Refused: Out of Resources": nothing was stored, the sender may try again
    DATA_SET_MISMATCH = 0xA900  # "Data Set does not match SOP Class": its SOP class or instance UID is not the command's
    PROCESSING_FAILURE = 0x0110  # N-ACTION: the request's data set lacks what it must hold
    RESOURCE_LIMITATION = 0x0213  # N-ACTION: the request cannot be answered now (the database is down); ask again later
    NO_SUCH_ACTION = 0x0123  # N-ACTION: an Action Type ID the SOP class does not define
    NO_SUCH_SOP_INSTANCE = 0x0112  # N-ACTION: not the well-known Storage Commitment instance
    CANNOT_UNDERSTAND = 0xC000  # "Cannot understand": the data set itself is unusable

    def meaning(self) -> str:
        category, meaning = STORAGE_SERVICE_CLASS_STATUS[self.value]
        return f"{category}: {meaning}" if meaning else category


@dataclass(frozen=True)
class Request:
    """A C-STORE-RQ, C-ECHO-RQ or N-ACTION-RQ (its SOP class and instance are the requested ones), or the
    N-EVENT-REPORT-RSP a peer returns to this node's report (``message_id`` the one it responds to)."""

    command: CommandField
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    has_data_set: bool
    action_type: int = 0  # N-ACTION: Action Type ID; N-EVENT-REPORT: Event Type ID
    status: int = 0


def _elements(data: bytes) -> dict[int, bytes]:
    values, offset = {}, 0
    while offset < len(data):
        if offset + 8 > len(data):
            raise ProtocolError("a command element header is cut off")
        group, element, length = struct.unpack_from("<HHL", data, offset)
        if group != 0x0000:
            raise ProtocolError(f"element ({group:04X},{element:04X}) in a command set")
        offset += 8
        if offset + length > len(data):
            raise ProtocolError(f"command element (0000,{element:04X}) runs past the command set")
        values[element] = data[offset : offset + length]
        offset += length
    return values


def parse_request(data: bytes) -> Request:
    """The request in command set ``data``; ProtocolError where it is malformed or not a request served here."""
    values = _elements(data)

    def number(tag: Tag) -> int:
        value = values.get(tag)
        if value is None or len(value) != 2:
            raise ProtocolError(f"command set without a valid (0000,{tag:04X})")
        return int.from_bytes(value, "little")

    def uid(tag: Tag) -> str:
        return values.get(tag, b"").decode("ascii", "replace").strip("\0 ")

    try:
        command = CommandField(number(Tag.COMMAND_FIELD))
    except ValueError:
        raise ProtocolError(f"DIMSE command 0x{number(Tag.COMMAND_FIELD):04X} is not served here") from None
    has_data_set = number(Tag.COMMAND_DATA_SET_TYPE) != NO_DATA_SET
    if command is CommandField.N_ACTION_RQ:
        requested = uid(Tag.REQUESTED_SOP_CLASS_UID), uid(Tag.REQUESTED_SOP_INSTANCE_UID)
        return Request(command, number(Tag.MESSAGE_ID), *requested, has_data_set, action_type=number(Tag.ACTION_TYPE_ID))
    if command is CommandField.N_EVENT_REPORT_RQ:
        affected = uid(Tag.AFFECTED_SOP_CLASS_UID), uid(Tag.AFFECTED_SOP_INSTANCE_UID)
        return Request(command, number(Tag.MESSAGE_ID), *affected, has_data_set, action_type=number(Tag.EVENT_TYPE_ID))
    if command is CommandField.N_EVENT_REPORT_RSP:
        return Request(command, number(Tag.MESSAGE_ID_BEING_RESPONDED_TO), uid(Tag.AFFECTED_SOP_CLASS_UID), "", has_data_set, status=number(Tag.STATUS))
    if command not in (CommandField.C_STORE_RQ, CommandField.C_ECHO_RQ):
        raise ProtocolError(f"{command.name} is not a request")
    return Request(command, number(Tag.MESSAGE_ID), uid(Tag.AFFECTED_SOP_CLASS_UID), uid(Tag.AFFECTED_SOP_INSTANCE_UID), has_data_set)


def _element(tag: Tag, value: bytes) -> bytes:
    return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value


def _uid(value: str) -> bytes:
    data = value.encode("ascii")
    return data + b"\0" if len(data) % 2 else data


_RESPONSES = {
    CommandField.C_STORE_RQ: CommandField.C_STORE_RSP,
    CommandField.C_ECHO_RQ: CommandField.C_ECHO_RSP,
    CommandField.N_ACTION_RQ: CommandField.N_ACTION_RSP,
    CommandField.N_EVENT_REPORT_RQ: CommandField.N_EVENT_REPORT_RSP,
}


def response(request: Request, status: int, comment: str = "") -> bytes:
    """The response to ``request``: C-STORE-RSP, C-ECHO-RSP or N-ACTION-RSP with ``status``, and an Error Comment (LO,
    at most 64 characters) where ``comment`` is given."""
    answer = _RESPONSES[request.command]
    body = _element(Tag.AFFECTED_SOP_CLASS_UID, _uid(request.sop_class_uid))
    body += _element(Tag.COMMAND_FIELD, struct.pack("<H", answer))
    body += _element(Tag.MESSAGE_ID_BEING_RESPONDED_TO, struct.pack("<H", request.message_id))
    body += _element(Tag.COMMAND_DATA_SET_TYPE, struct.pack("<H", NO_DATA_SET))
    body += _element(Tag.STATUS, struct.pack("<H", status))
    if comment:
        text = comment.encode("ascii", "replace")[:64]
        body += _element(Tag.ERROR_COMMENT, text + b" " if len(text) % 2 else text)
    if answer in (CommandField.C_STORE_RSP, CommandField.N_ACTION_RSP, CommandField.N_EVENT_REPORT_RSP):
        body += _element(Tag.AFFECTED_SOP_INSTANCE_UID, _uid(request.sop_instance_uid))
    if answer is CommandField.N_ACTION_RSP and status == Status.SUCCESS:
        body += _element(Tag.ACTION_TYPE_ID, struct.pack("<H", request.action_type))
    if answer is CommandField.N_EVENT_REPORT_RSP and status == Status.SUCCESS:
        body += _element(Tag.EVENT_TYPE_ID, struct.pack("<H", request.action_type))
    return _element(Tag.GROUP_LENGTH, struct.pack("<L", len(body))) + body


def event_report(message_id: int, sop_class_uid: str, sop_instance_uid: str, event_type: int) -> bytes:
    """An N-EVENT-REPORT-RQ command set (PS3.7 10.3.1), a data set to follow."""
    body = _element(Tag.AFFECTED_SOP_CLASS_UID, _uid(sop_class_uid))
    body += _element(Tag.COMMAND_FIELD, struct.pack("<H", CommandField.N_EVENT_REPORT_RQ))
    body += _element(Tag.MESSAGE_ID, struct.pack("<H", message_id))
    body += _element(Tag.COMMAND_DATA_SET_TYPE, struct.pack("<H", 0x0000))
    body += _element(Tag.AFFECTED_SOP_INSTANCE_UID, _uid(sop_instance_uid))
    body += _element(Tag.EVENT_TYPE_ID, struct.pack("<H", event_type))
    return _element(Tag.GROUP_LENGTH, struct.pack("<L", len(body))) + body
