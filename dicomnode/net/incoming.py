"""Data sets written to disk as their fragments arrive: each in a hidden file after its File Meta Information
(PS3.10 7.1), fsynced before the node answers for it."""

from __future__ import annotations

import os
import struct
import uuid
from pathlib import Path

from dicomnode.base.uids import IMPLEMENTATION_CLASS_UID
from dicomnode.net.association import IMPLEMENTATION_VERSION


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, calling_ae: str) -> bytes:
    """Preamble, prefix and File Meta Information (PS3.10 7.1), explicit VR little endian."""

    def element(element: int, vr: bytes, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\0" if vr == b"UI" else b" "
        if vr == b"OB":
            return struct.pack("<HH2sHL", 2, element, vr, 0, len(value)) + value
        return struct.pack("<HH2sH", 2, element, vr, len(value)) + value

    def text(value: str) -> bytes:
        return value.encode("ascii", "replace")

    body = (
        element(0x0001, b"OB", b"\0\1")
        + element(0x0002, b"UI", text(sop_class_uid))
        + element(0x0003, b"UI", text(sop_instance_uid))
        + element(0x0010, b"UI", text(transfer_syntax))
        + element(0x0012, b"UI", text(IMPLEMENTATION_CLASS_UID))
        + element(0x0013, b"SH", text(IMPLEMENTATION_VERSION))
        + (element(0x0016, b"AE", text(calling_ae)) if calling_ae else b"")
    )
    return bytes(128) + b"DICM" + element(0x0000, b"UL", struct.pack("<L", len(body))) + body


class Incoming:
    """One data set being written to a hidden file under ``folder`` as it arrives; bytes past ``limit`` are counted,
    not kept, and so are all bytes after a failed write (``error`` says why)."""

    def __init__(self, folder: Path, meta: bytes, limit: int) -> None:
        self.path = folder / f".{uuid.uuid4().hex}.tmp"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.size, self._limit, self.error = 0, limit, ""
        try:
            self._write(memoryview(meta))
        except OSError as exc:  # a full disk: the data set is read and refused, the file removed with it
            self.error = f"write failed: {exc}"

    def _write(self, view: memoryview) -> None:
        while view:
            view = view[os.write(self._fd, view) :]

    def write(self, data: memoryview) -> None:
        if self.size + len(data) <= self._limit and not self.error:
            try:
                self._write(data)
            except OSError as exc:  # a full disk, an I/O error: the instance will be refused
                self.error = f"write failed: {exc}"
        self.size += len(data)

    def finish(self) -> None:
        """fsync and close; once this returns without raising, the data set is on disk."""
        try:
            os.fsync(self._fd)
        finally:
            os.close(self._fd)

    def discard(self) -> None:
        os.close(self._fd)
        self.path.unlink(missing_ok=True)
