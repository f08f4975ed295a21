"""A reader's correction kept as a training case for ``dicomnode-train finetune --site-cases``: the measured series,
the reader's labels and where they came from, in the layout ``dicomnode-train evaluate-real --cases`` reads.

Files of a case ``NAME`` (in one folder for every case): ``NAME.nii.gz`` (the series in HU), ``NAME_labels.nii.gz``
(1 medulla, 2 cortex; where the reader gave the parenchyma alone, 1 parenchyma), ``NAME_{left,right}_{parenchyma,
cortex}.nii.gz`` and ``NAME.json``, written last, so that a case cut off while written is never read. The json says
which sides the reader labelled, whether that is every kidney the model found (``complete``: a side left out is
background in the labels, so an incomplete case must not be trained on) and whether every labelled side has its
cortex (``cortex_labelled``). The images carry
no identifier; the json names the patient, study and series by keyed hashes (``corrections.pseudonymise``, the key of
``history.pseudonym_key_env``), leaves them out where no key is set, or gives them as in the images where the site
turned pseudonymisation off.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dicomnode.base.files import fsync_folder, write_atomically
from dicomnode.imaging.load import LoadedSeries
from dicomnode.node.export import pseudonymised
from dicomnode.renal import SIDES, Side, Structure


@dataclass(frozen=True)
class Provenance:
    """Where a site case's labels came from."""

    reader: str
    created: str  # the SEG's Content Date and Time
    corrected_at: str  # when the node took it, ISO 8601
    model: tuple[str, str]  # name and version of what made the result corrected
    identifiers: dict[str, str]  # patient_id, issuer, study_uid, series_uid, seg_sop_uid, as the images give them
    volumes_ml: dict[str, dict[str, float]]  # "node" and "reader": "<structure>_<side>" -> ml
    arterial: bool  # the series was measured as arterial (cortex and medulla reported)
    node_sides: tuple[Side, ...]  # the sides on which the node's model found a kidney


def write_site_case(
    folder: Path,
    name: str,
    series: LoadedSeries,
    masks: dict[tuple[Structure, Side], np.ndarray],
    provenance: Provenance,
    key: bytes | None,
    pseudonymise: bool,
) -> Path:
    """Write the case ``name`` into ``folder``; returns its json. ``masks`` are the reader's, on the series' grid."""
    folder.mkdir(parents=True, exist_ok=True)
    shape = series.hu.shape
    parenchyma = {
        side: _mask(masks, Structure.PARENCHYMA, side, shape) | _mask(masks, Structure.CORTEX, side, shape) | _mask(masks, Structure.MEDULLA, side, shape)
        for side in SIDES
    }
    cortex = {side: _mask(masks, Structure.CORTEX, side, shape) for side in SIDES}
    labelled = [side for side in SIDES if parenchyma[side].any()]
    labels = np.zeros(shape, np.uint8)
    for side in SIDES:
        labels[parenchyma[side]] = 1
        labels[cortex[side]] = 2
    reference = series.to_sitk()
    _write_image(sitk.Cast(reference, sitk.sitkInt16), folder / f"{name}.nii.gz")
    _write_image(_like(labels, reference), folder / f"{name}_labels.nii.gz")
    for side in SIDES:
        _write_image(_like(parenchyma[side].astype(np.uint8), reference), folder / f"{name}_{side}_parenchyma.nii.gz")
        _write_image(_like(cortex[side].astype(np.uint8), reference), folder / f"{name}_{side}_cortex.nii.gz")
    reader_ml, node_ml = provenance.volumes_ml.get("reader", {}), provenance.volumes_ml.get("node", {})
    metadata = {
        "source": "reader correction",
        "reader": provenance.reader,
        "created": provenance.created,
        "corrected_at": provenance.corrected_at,
        "model": {"name": provenance.model[0], "version": provenance.model[1]},
        "identifiers": _identifiers(provenance.identifiers, key, pseudonymise),
        "sides_labelled": [str(side) for side in labelled],
        "complete": set(provenance.node_sides) <= set(labelled),  # every kidney the model found is labelled
        "cortex_labelled": bool(labelled) and all(cortex[side].any() for side in labelled),
        "arterial": provenance.arterial,
        "volumes_ml": provenance.volumes_ml,
        "change_ml": {k: round(ml - node_ml[k], 3) for k, ml in reader_ml.items() if k in node_ml},
    }
    path = folder / f"{name}.json"
    write_atomically(path, json.dumps(metadata, indent=2).encode())
    return path


def delete_site_case(folder: Path, name: str) -> int:
    """Delete the case ``name`` from ``folder``, its json first (so that a case half deleted is never read); returns
    how many files went."""
    files = [folder / f"{name}.json", folder / f"{name}.nii.gz", *sorted(folder.glob(f"{name}_*.nii.gz"))]
    for path in files:
        path.unlink(missing_ok=True)
    fsync_folder(folder)
    return len(files)


def _identifiers(identifiers: dict[str, str], key: bytes | None, pseudonymise: bool) -> dict[str, str]:
    if not pseudonymise:
        return dict(identifiers)
    if key is None:
        return {"left_out": "corrections.pseudonymise is on and no key is set (history.pseudonym_key_env)"}
    return pseudonymised(identifiers, key)  # as the export does


def _mask(masks: dict[tuple[Structure, Side], np.ndarray], structure: Structure, side: Side, shape: tuple[int, ...]) -> np.ndarray:
    return masks[(structure, side)] if (structure, side) in masks else np.zeros(shape, bool)


def _like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def _write_image(image: sitk.Image, path: Path) -> None:
    """Write ``image`` beside ``path``, fsync it, then rename it into place."""
    tmp = path.with_name(f".{path.name.removesuffix('.nii.gz')}.{os.getpid()}.tmp.nii.gz")
    sitk.WriteImage(image, str(tmp))
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_folder(path.parent)
