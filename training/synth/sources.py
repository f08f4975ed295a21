"""What cases are built from: real patients' anatomies (by name) and the pool of KiTS19 kidneys, loaded once."""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from pathlib import Path

from training.anatomies import ANATOMY_CREDITS, SHARED_ATLAS, VALIDATION, AnatomySource, anatomy_sources, load_anatomy
from training.synth_anatomy import CREDITS, Atlas, KitsKidney, load_atlas, load_kits_kidneys

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
DEFAULT_CACHE = Path.home() / ".cache" / "dicomnode-train"


@dataclass(frozen=True)
class Anatomy:
    """One patient's completed anatomy, its name and whom to credit for it."""

    name: str
    credit: str
    atlas: Atlas


@dataclass(frozen=True)
class Sources:
    """The atlases (real patients' anatomies by name) and the pool of KiTS19 kidneys."""

    anatomies: tuple[Anatomy, ...]
    kidneys: tuple[KitsKidney, ...]


class AnatomySet(str, enum.Enum):
    """Which anatomies ``load_sources`` builds cases on."""

    TRAIN = "train"  # every anatomy but those kept for validation, and the shared real CT's
    VALIDATION = "validation"  # the anatomies kept out of training (``anatomies.VALIDATION``)
    SHARED = "shared"  # the shared real CT's alone (the generator's first version)


@functools.lru_cache(maxsize=4)
def load_sources(
    data: Path = DEFAULT_DATA,
    cache_dir: Path = DEFAULT_CACHE,
    kits_cases: tuple[str, ...] | None = None,
    anatomies: AnatomySet | tuple[str, ...] = AnatomySet.TRAIN,
) -> Sources:
    """Atlases and KiTS kidneys (all cases, or ``kits_cases``), parsed once per process and cached on disk.

    ``anatomies`` is a set of them or a tuple of names (``real_ct`` is the shared real CT's)."""
    found = {source.name: source for source in anatomy_sources(data / "anatomy")} if (data / "anatomy").exists() else {}
    names = anatomy_names(found, anatomies)
    built = tuple(
        Anatomy(name, CREDITS[1], load_atlas(data / "real_ct", cache_dir))
        if name == SHARED_ATLAS
        else Anatomy(name, ANATOMY_CREDITS[found[name].source], load_anatomy(found[name], cache_dir))
        for name in names
    )
    if not built:
        raise ValueError(f"anatomies: none found under {data}")
    kidneys = load_kits_kidneys(data / "kits19_labels", cache_dir, list(kits_cases) if kits_cases else None)
    if not kidneys:
        raise ValueError(f"no usable KiTS19 kidneys under {data / 'kits19_labels'}")
    return Sources(built, tuple(kidneys))


def anatomy_names(found: dict[str, AnatomySource], anatomies: AnatomySet | tuple[str, ...]) -> list[str]:
    """The names of the anatomies in a set (of those ``found``), or the names given, checked."""
    if isinstance(anatomies, tuple):
        unknown = sorted(set(anatomies) - set(found) - {SHARED_ATLAS})
        if unknown:
            raise ValueError(f"anatomies: {', '.join(unknown)} not found")
        return list(anatomies)
    if anatomies is AnatomySet.VALIDATION:
        return [name for name in VALIDATION if name in found]
    if anatomies is AnatomySet.SHARED:
        return [SHARED_ATLAS]
    return [SHARED_ATLAS, *(name for name in found if name not in VALIDATION)]
