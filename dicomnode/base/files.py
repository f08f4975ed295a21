"""Files shared by the stages: durable writes (a file is either whole on disk or absent, never half-written), and
the free space on their disk."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pydicom
from pydicom.charset import convert_encodings, default_encoding


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
    """Write ``ds``, a dataset the node built, as a DICOM file (with File Meta Information) atomically to ``path``.

    pydicom checks a dataset it did not read for ambiguous VRs (such as "OB or OW") before writing it, and each check
    covers every item below, so an item six levels deep was checked six times: most of the time a 1 mm study's SR
    (7,000 items) took to write. The items, and the dataset itself where none of its own elements is ambiguous, are marked
    as encoded already (``set_original_encoding``), so that the check runs once at most; the bytes are the same, and
    an item holding an ambiguous VR makes pydicom refuse to write rather than guess.
    """
    syntax = ds.file_meta.TransferSyntaxUID
    if any(" or " in element.VR for element in ds):
        charset = convert_encodings(ds.SpecificCharacterSet) if ds.get("SpecificCharacterSet") else default_encoding
        for element in ds:
            for item in element.value if element.VR == "SQ" else ():
                _as_encoded(item, syntax.is_implicit_VR, syntax.is_little_endian, charset)
    else:
        _as_encoded(ds, syntax.is_implicit_VR, syntax.is_little_endian)
    buffer = pydicom.filebase.DicomBytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    write_atomically(path, buffer.getvalue())


def _as_encoded(ds: pydicom.Dataset, implicit: bool, little_endian: bool, inherited: str | list[str] = default_encoding) -> None:
    """Mark ``ds`` and every item in it as encoded in ``implicit`` VR and ``little_endian`` order with its character
    set (an item without Specific Character Set: its parent's, as pydicom encodes it)."""
    charset = convert_encodings(ds.SpecificCharacterSet) if ds.get("SpecificCharacterSet") else inherited
    ds.set_original_encoding(implicit, little_endian, charset)
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                _as_encoded(item, implicit, little_endian, charset)
