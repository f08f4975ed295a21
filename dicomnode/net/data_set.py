"""Checks on a received data set before it is stored: that its bytes are whole and in its context's encoding, and
that it names itself with valid UIDs that agree with its C-STORE command."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import pydicom

from dicomnode.net.dimse import StoreStatus

#: (FFFF,FFFF): a length to be found from a delimiter (PS3.5 7.1.1).
UNDEFINED_LENGTH = 0xFFFFFFFF
#: PS3.5 9.1: components of digits separated by dots, no component with a leading zero, at most 64 characters.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
MAX_UID_LENGTH = 64
#: An Error Comment (0000,0902) holds 64 characters.
MAX_COMMENT = 64


@dataclass(frozen=True)
class Identity:
    """The UIDs a data set names itself by ("" where absent)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class: str

    @classmethod
    def of(cls, ds: pydicom.Dataset) -> Identity:
        def text(keyword: str) -> str:
            return str(ds.get(keyword, "") or "")

        return cls(text("StudyInstanceUID"), text("SeriesInstanceUID"), text("SOPInstanceUID"), text("SOPClassUID"))


@dataclass(frozen=True)
class Refusal:
    """Why a data set is not stored: ``reason`` in full for the log and the record, ``comment`` for the C-STORE-RSP's
    Error Comment, with ``status``."""

    reason: str
    comment: str
    status: StoreStatus = StoreStatus.CANNOT_UNDERSTAND


def valid_uid(uid: str) -> tuple[bool, str]:
    """Whether ``uid`` is a UID as PS3.5 9.1 defines it, and why not."""
    if not uid:
        return False, "missing"
    if len(uid) > MAX_UID_LENGTH:
        return False, f"{len(uid)} characters, more than {MAX_UID_LENGTH}"
    if not _UID.match(uid):
        return False, "not digits and dots without leading zeros"
    return True, ""


def refusal(identity: Identity, broken: str, command_class: str, command_instance: str) -> Refusal | None:
    """Why a parsed data set (``broken`` from :func:`parse_data_set`) sent with a C-STORE for ``command_class`` and
    ``command_instance`` is refused; None where it may be stored."""
    if broken:
        return Refusal(broken, broken[:MAX_COMMENT])
    invalid = [
        (name, why)
        for name, uid in (("StudyInstanceUID", identity.study_uid), ("SeriesInstanceUID", identity.series_uid), ("SOPInstanceUID", identity.sop_uid))
        for ok, why in [valid_uid(uid)]
        if not ok
    ]
    if not identity.sop_class:
        invalid.append(("SOPClassUID", "missing"))
    if invalid:
        reason = f"missing or invalid UID in the data set: {'; '.join(f'{name} {why}' for name, why in invalid)}"
        return Refusal(reason, f"invalid {', '.join(name for name, _ in invalid)}"[:MAX_COMMENT])
    for name, command, data_set in (("SOP Class", command_class, identity.sop_class), ("SOP Instance", command_instance, identity.sop_uid)):
        if command != data_set:
            reason = f"the data set's {name} UID {data_set} is not the command's Affected {name} UID {command}"
            return Refusal(reason, f"{name} UID differs from the command's", StoreStatus.DATA_SET_MISMATCH)
    return None


def parse_data_set(path: Path) -> tuple[pydicom.Dataset | None, str]:
    """Read a received data set's structure, values longer than 256 bytes left on disk; returns it and why it is
    broken ("" if it is whole), or None and why it cannot be read. Broken: an element whose declared length runs past
    the end (a data set cut short), an undefined length without its delimiter, or bytes of the other VR encoding than
    the transfer syntax of its presentation context (PS3.5 7.1: a context fixes the encoding)."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, defer_size=256)
            size = path.stat().st_size
            lengths = [ds.get_item(tag, keep_deferred=True) for tag in ds.keys()]
    except Exception as exc:  # noqa: BLE001  # whatever a peer's bytes make pydicom raise, the data set is not understood
        return None, str(exc)
    messages = [str(w.message) for w in caught]
    if any("found implicit VR" in m or "found explicit VR" in m for m in messages):
        return ds, "the data set's VR encoding is not that of its presentation context's transfer syntax"
    if any("End of file" in m for m in messages):
        return ds, "the data set ends inside an element (an undefined length without its delimiter)"
    if ds.file_meta.TransferSyntaxUID.is_deflated:  # positions are in the inflated stream; a cut stream fails to inflate
        return ds, ""
    for element in lengths:
        length, start = getattr(element, "length", None), getattr(element, "value_tell", None)
        if length is not None and start is not None and length != UNDEFINED_LENGTH and start + length > size:
            return ds, f"the data set ends inside element {element.tag}: {length} bytes declared, {size - start} sent"
    return ds, ""
