"""nnU-Net experiment planning and preprocessing, plus small plans that train on a CPU."""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

#: The configuration nnU-Net plans by default (the paper's 3D U-Net).
FULLRES = "3d_fullres"


@dataclass(frozen=True)
class SmallPlan:
    """A reduced 3D U-Net: fewer stages and features on smaller patches (z, y, x); with ``spacing`` (z, y, x mm), on
    data preprocessed to that spacing instead of 3d_fullres's."""

    name: str
    patch_size: tuple[int, int, int]
    features: tuple[int, ...]
    strides: tuple[tuple[int, int, int], ...]
    spacing: tuple[float, float, float] | None = None


#: Small plans selectable by name. "3d_tiny" is for tests; "3d_cpu" trains the shipped model on 2 cores.
SMALL_PLANS = {
    "3d_tiny": SmallPlan("3d_tiny", (16, 32, 32), (4, 8, 16), ((1, 1, 1), (2, 2, 2), (2, 2, 2))),
    "3d_cpu": SmallPlan("3d_cpu", (16, 64, 64), (8, 16, 32, 64), ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2))),
    # for isotropic data such as TotalSegmentator's convention at 3 mm: 96 x 192 x 192 mm patches, and a fifth stage
    # so that a kidney's voxels see the spine about 100 mm away (with four stages a stand-in could not tell the right
    # kidney from the left)
    "3d_cpu_iso": SmallPlan("3d_cpu_iso", (32, 64, 64), (8, 16, 32, 64, 96), ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))),
    # the kidney localizer: 160 x 240 x 240 mm patches at 5 mm, so that a voxel sees the liver, spleen, spine and
    # bowel around it and most of an abdomen's width (48 x 48 in-plane, as 64 x 64 trained too slowly on 2 cores)
    "3d_loc": SmallPlan("3d_loc", (32, 48, 48), (8, 16, 32, 64, 96), ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)), (5.0, 5.0, 5.0)),
}


def plans_path(preprocessed: Path, dataset_name: str) -> Path:
    return preprocessed / dataset_name / "nnUNetPlans.json"


def add_small_plan(path: Path, plan: SmallPlan, batch_size: int = 2) -> None:
    """Add ``plan`` as a configuration derived from 3d_fullres, sharing its preprocessed data."""
    plans = json.loads(path.read_text())
    config = copy.deepcopy(plans["configurations"][FULLRES])
    arch = config["architecture"]["arch_kwargs"]
    stages = len(plan.features)
    arch.update(
        n_stages=stages,
        features_per_stage=list(plan.features),
        kernel_sizes=[[3, 3, 3]] * stages,
        strides=[list(s) for s in plan.strides],
        n_conv_per_stage=[2] * stages,
        n_conv_per_stage_decoder=[2] * (stages - 1),
    )
    config.update(patch_size=list(plan.patch_size), batch_size=batch_size)
    if plan.spacing is not None:
        config.update(spacing=list(plan.spacing), data_identifier=f"nnUNetPlans_{plan.name}")
    plans["configurations"][plan.name] = config
    plans["configurations"][FULLRES]["batch_size"] = batch_size
    path.write_text(json.dumps(plans, indent=2))


def plan_and_preprocess(dataset_id: int, preprocessed: Path, dataset_name: str, configuration: str, processes: int) -> None:
    """Fingerprint, plan and preprocess once; add the small plan when one is asked for."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess

    path = plans_path(preprocessed, dataset_name)
    if not path.exists():
        extract_fingerprints([dataset_id], num_processes=processes, check_dataset_integrity=True)
        plan_experiments([dataset_id])
    if configuration in SMALL_PLANS:
        add_small_plan(path, SMALL_PLANS[configuration])
    data_identifier = json.loads(path.read_text())["configurations"][configuration]["data_identifier"]
    if not (preprocessed / dataset_name / data_identifier).exists():
        preprocess([dataset_id], configurations=(configuration,), num_processes=(processes,))


def preprocess_with_plans(raw_dataset: Path, dataset_id: int, preprocessed: Path, model_folder: Path, configuration: str, processes: int) -> None:
    """Preprocess ``raw_dataset`` with a trained model's own plans and fingerprint (its ``plans.json`` and
    ``dataset_fingerprint.json``), as nnU-Net moves plans between datasets for pretraining: the same network, spacing
    and intensity normalisation, so that training can start from the model's weights."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess

    plans = json.loads((model_folder / "plans.json").read_text())
    folder = preprocessed / raw_dataset.name
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(raw_dataset / "dataset.json", folder / "dataset.json")
    shutil.copy2(model_folder / "dataset_fingerprint.json", folder / "dataset_fingerprint.json")
    plans_path(preprocessed, raw_dataset.name).write_text(json.dumps({**plans, "dataset_name": raw_dataset.name}, indent=2))
    preprocess([dataset_id], configurations=(configuration,), num_processes=(processes,))
