"""Files shared by the stages: durable writes (a file is either whole on disk or absent, never half-written), and
the free space on their disk."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pydicom


def free_mb(folder: Path) -> float:
    """Free space on the file system that holds ``folder``, in MiB."""
    return shutil.disk_usage(folder).free / 2**20


def remove_partial_writes(folder: Path) -> list[Path]:
    """Delete temporary files of writes a crash interrupted (never indexed, so nothing is lost)."""
    partial = list(folder.rglob(".*.tmp"))
    for path in partial:
        path.unlink(missing_ok=True)
    return partial


def fsync_folder(folder: Path) -> None:
    """fsync a folder, so that the names created in it survive a power cut."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_into_place(source: Path, path: Path) -> None:
    """Rename ``source``, written and fsynced on the same file system, to ``path``, and fsync the folders that
    gained a name (``path``'s, and the parents of the folders made for it), so that ``path`` survives a power cut."""
    missing, folder = [], path.parent
    while not folder.exists():  # usually none: one check per instance
        missing.append(folder)
        folder = folder.parent
    path.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, path)
    for gained in {path.parent, *(m.parent for m in missing)}:
        fsync_folder(gained)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save_dataset(path: Path, ds: pydicom.Dataset) -> None:
    """Write ``ds`` as a DICOM file (with File Meta Information) atomically to ``path``."""
    buffer = pydicom.filebase.DicomBytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    write_atomically(path, buffer.getvalue())
