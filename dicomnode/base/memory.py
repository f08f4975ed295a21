"""The process's peak resident memory per stage: Linux keeps the peak (VmHWM in /proc/self/status) and resets it
when "5" is written to /proc/self/clear_refs. Elsewhere, or where the reset is refused, no figure is given."""

from __future__ import annotations

from pathlib import Path

STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peak() -> bool:
    """Start a new peak from the memory in use now; False where the system does not allow it."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_gib() -> float | None:
    """The peak resident memory since the last reset (or the start), GiB; None where the system does not say."""
    try:
        lines = STATUS.read_text().splitlines()
    except OSError:
        return None
    kib = next((line.split()[1] for line in lines if line.startswith("VmHWM:")), None)
    return None if kib is None else int(kib) / 2**20
