"""The cohort table: one row per result in the measurement history, as CSV or Parquet, for researchers; a study a
reader corrected has two, the node's (``source`` node) and the reader's (``source`` reader).

Identifiers (Patient ID, Issuer of Patient ID, study and series UIDs) are written as stored, or with
``pseudonymise`` as keyed hashes (HMAC-SHA-256 under a key the user keeps): the same patient gives the same pseudonym
in every export made with that key, so follow-up stays linkable, and without the key no one can recover or test an
identifier. Study dates stay, as follow-up needs them.

In CSV (OWASP's advice on CSV injection), text cells are in double quotes, and one beginning with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return gets a single quote in front, so that a spreadsheet shows it rather than runs it as
a formula; numbers are written bare, a negative one too.
"""

from __future__ import annotations

import csv
import enum
import hashlib
import hmac
import io
from pathlib import Path
from typing import Any

from dicomnode.base.files import write_atomically
from dicomnode.measured import HistoryEntry
from dicomnode.renal import STRUCTURES, Structure
from dicomnode.store.history import RANGE_COLUMNS, VOLUME_COLUMNS, VOLUME_KEYS

#: Pipeline stages whose seconds each row gives.
STAGES = ("select", "load", "segment", "measure", "qc", "write")
IDENTIFIERS = ("patient_id", "issuer", "study_uid", "series_uid")
COLUMNS = (
    *IDENTIFIERS,
    "study_date",
    "result",
    "verdict",
    *VOLUME_COLUMNS,
    *RANGE_COLUMNS,
    "total_parenchyma_ml",
    "left_split",
    *(f"qc_{structure}" for structure in STRUCTURES),
    "qc_findings",
    "model",
    "model_version",
    "cortex_model",
    "cortex_model_version",
    *(f"{stage}_s" for stage in STAGES),
    "recorded_at",
    "source",
)


#: What starts a formula in a spreadsheet (OWASP, CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class Format(str, enum.Enum):
    """File formats of ``dicomnode export``."""

    CSV = "csv"
    PARQUET = "parquet"


#: The shortest key that pseudonymises (``history.pseudonym_key_env``).
MIN_KEY_LENGTH = 16


def pseudonym(key: bytes, value: str) -> str:
    """``value`` as a keyed hash (HMAC-SHA-256, hexadecimal, 32 characters); "" stays "" (nothing to hide)."""
    if not value:
        return ""
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:32]


def pseudonymised(identifiers: dict[str, str], key: bytes) -> dict[str, str]:
    """Each of ``identifiers`` (``patient_id`` and ``issuer`` among them) as its pseudonym under ``key``; the patient's
    hashes issuer and ID together: one ID in two issuers is two patients."""
    hashed = {name: pseudonym(key, value) for name, value in identifiers.items()}
    hashed["patient_id"] = pseudonym(key, f"{identifiers['issuer']}\\{identifiers['patient_id']}")
    return hashed


def row(entry: HistoryEntry, key: bytes | None = None) -> dict[str, Any]:
    """One result as the table's columns; with ``key`` its identifiers pseudonymised under it."""
    identifiers = {"patient_id": entry.patient.patient_id, "issuer": entry.patient.issuer, "study_uid": entry.study_uid, "series_uid": entry.series_uid}
    if key is not None:
        identifiers = pseudonymised(identifiers, key)
    parenchyma = [entry.volumes[k] for k in VOLUME_KEYS if k[0] == Structure.PARENCHYMA and k in entry.volumes]
    made_by = {structure: entry.algorithms.get(structure, ("", "")) for structure in (Structure.PARENCHYMA, Structure.CORTEX)}
    return {
        **identifiers,
        "study_date": entry.study_date,
        "result": "withheld" if entry.withheld else "sent",
        "verdict": entry.verdict,
        **{column: entry.volumes.get(k) for column, k in zip(VOLUME_COLUMNS, VOLUME_KEYS)},
        **dict(zip(RANGE_COLUMNS, [bound for k in VOLUME_KEYS for bound in entry.ranges.get(k, (None, None))])),
        "total_parenchyma_ml": round(sum(parenchyma), 3) if len(parenchyma) == 2 else None,  # both kidneys only
        "left_split": entry.left_split,
        **{f"qc_{s}": ("passed" if s in entry.qc_passed else "failed") if any(k[0] == s for k in entry.volumes) else "" for s in STRUCTURES},
        "qc_findings": "; ".join(entry.qc_findings),
        "model": made_by[Structure.PARENCHYMA][0],
        "model_version": made_by[Structure.PARENCHYMA][1],
        "cortex_model": made_by[Structure.CORTEX][0],
        "cortex_model_version": made_by[Structure.CORTEX][1],
        **{f"{stage}_s": entry.timings.get(stage) for stage in STAGES},
        "recorded_at": round(entry.recorded_at, 3),
        "source": entry.source.value,
    }


def write_table(entries: list[HistoryEntry], path: Path, kind: Format, key: bytes | None = None) -> int:
    """Write ``entries`` to ``path`` as ``kind``, atomically (a reader never sees half a table); returns the rows."""
    if kind is Format.CSV:
        write_atomically(path, csv_text(entries, key).encode())
    else:
        rows = [row(entry, key) for entry in entries]
        import pyarrow as pa
        import pyarrow.parquet as pq

        numbers = {*VOLUME_COLUMNS, *RANGE_COLUMNS, "total_parenchyma_ml", "left_split", *(f"{stage}_s" for stage in STAGES), "recorded_at"}
        schema = pa.schema([(name, pa.float64() if name in numbers else pa.string()) for name in COLUMNS])
        buffer = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer)
        write_atomically(path, buffer.getvalue().to_pybytes())
    return len(entries)


def csv_text(entries: list[HistoryEntry], key: bytes | None = None) -> str:
    """The table as CSV: a header of COLUMNS, then a row per entry (empty cells where there is no value). Text is
    quoted, so that a carriage return in it stays in its cell, and behind a single quote where it would start a formula."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
    writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in row(entry, key).items()} for entry in entries)
    return text.getvalue()


def _cell(value: Any) -> Any:
    """``value`` as a CSV cell: None empty, text starting with FORMULA_START behind a single quote, numbers as they are."""
    if value is None:
        return ""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value
