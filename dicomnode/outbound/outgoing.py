"""What a sender is given: result files named by their File Meta Information, and how a sender of each protocol is
called."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info

from dicomnode.config import Destination, NodeConfig


@dataclass(frozen=True)
class SendOutcome:
    """What one attempt to send one file to one destination gave (by C-STORE or STOW-RS)."""

    ok: bool
    detail: str


#: Called with a Transaction UID and the indices of the datasets stored, before the commitment request is sent.
Committing = Callable[[str, list[int]], None]


@dataclass(frozen=True)
class Outgoing:
    """A result file to send, named by its File Meta Information; its dataset is sent as the file holds it."""

    path: Path
    sop_class: str
    sop_instance: str
    transfer_syntax: str

    @classmethod
    def of(cls, path: Path) -> Outgoing:
        """The file at ``path``, from its File Meta Information alone; InvalidDicomError or OSError where it has none."""
        meta = read_file_meta_info(path)
        try:
            return cls(path, str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID), str(meta.TransferSyntaxUID))
        except AttributeError as exc:
            raise InvalidDicomError(f"incomplete File Meta Information: {exc}") from exc


#: A protocol's sender: result files to one destination, one outcome per file, and the Transaction UID of a storage
#: commitment it asked for (None where none), after ``Committing`` recorded it.
Sender = Callable[[NodeConfig, Destination, Sequence[Outgoing], Committing | None], tuple[list[SendOutcome], str | None]]
