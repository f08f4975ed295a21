"""Fine-tune a model on a site's reader corrections, and keep the candidate only where it does no worse.

The node keeps each reader's correction of a result as a site case (``dicomnode/node/site_cases.py``, in the layout of
:mod:`training.truth_case`). ``dicomnode-train finetune`` holds out the newest ``holdout`` cases, fine-tunes the current
model's network (its own plans, started from its weights) on the others, and runs both models through the node's
pipeline on the held-out cases. The gate's figure is the mean absolute parenchyma volume error (%) over the held-out
kidneys: the candidate is exported only where its figure is at most ``tolerance_pct`` points above the current model's.
The mean parenchyma Dice over the same kidneys is reported beside it and does not decide.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import yaml

from dicomnode.renal import Side
from dicomnode.segment.model import Model, localizer_of
from training.cases import Case, write_manifest
from training.dataset_import import DATASET_LABELS, import_cases
from training.evaluate_real import RealScore, evaluate_real, truth_cases, write_real_report
from training.export import ModelCard, export_model
from training.plans import preprocess_with_plans
from training.train import train_fold
from training.truth_case import truth_case_names

#: The nnU-Net dataset the training cases are imported as (``DatasetXXX_SiteFinetune``).
DATASET_NAME = "SiteFinetune"
GATE_FIGURE = "mean |parenchyma volume error| over the held-out kidneys (decides); mean parenchyma Dice (reported)"


@dataclass(frozen=True)
class SiteCase:
    """A reader's correction as the node keeps it: the case's name in its folder and what its json says."""

    name: str
    folder: Path
    created: str
    complete: bool  # every kidney the node's model found was labelled by the reader
    cortex_labelled: bool  # every labelled side has its cortex

    @property
    def image(self) -> Path:
        return self.folder / f"{self.name}.nii.gz"

    @property
    def labels(self) -> Path:
        return self.folder / f"{self.name}_labels.nii.gz"

    def has_kidney(self) -> bool:
        """Whether the reader's parenchyma shows a kidney on either side (a side not labelled is empty)."""
        return any(sitk.GetArrayViewFromImage(sitk.ReadImage(str(self.folder / f"{self.name}_{side.value}_parenchyma.nii.gz"))).any() for side in Side)


@dataclass(frozen=True)
class SiteSplit:
    """Which site cases train the candidate, which are left out of training, and which the gate scores."""

    training: list[SiteCase]
    incomplete: list[SiteCase]  # not held out, yet not trained on: a kidney the reader did not label would be background
    without_cortex: list[SiteCase]  # ... or the reader drew the parenchyma alone, and the model learns cortex
    held_out: list[SiteCase]


@dataclass(frozen=True)
class FinetuneRequest:
    """What ``dicomnode-train finetune`` was asked to do."""

    site_cases: Path
    model: Path
    work: Path
    name: str  # the candidate's
    models: Path  # where an accepted candidate is exported
    holdout: int  # how many of the newest site cases the gate scores
    trainer: str
    device: str
    dataset_id: int
    tolerance_pct: float  # points of mean |volume error| the candidate may be worse by
    localizer: str  # as model.localizer: auto, none or a name


@dataclass(frozen=True)
class FinetunePlan:
    """A checked request: the current model, the split and the localizer both models are run behind."""

    request: FinetuneRequest
    model: Model
    split: SiteSplit
    localizer: Model | None


@dataclass(frozen=True)
class HeldOutFigures:
    """One model's figures on the held-out site cases."""

    model: str
    case_ids: list[str]
    kidneys: int  # sides whose reference shows a kidney
    volume_error_pct: float  # mean |measured - reference| / reference over those kidneys
    dice: float  # mean parenchyma Dice over those kidneys


@dataclass(frozen=True)
class GateVerdict:
    """Whether the candidate may replace the current model, and why."""

    ok: bool
    reason: str
    current: HeldOutFigures
    candidate: HeldOutFigures
    tolerance_pct: float
    worse_by: float  # points of mean |volume error| the candidate is worse by; below 0: better


@dataclass(frozen=True)
class FinetuneOutcome:
    """The gate's verdict, where its reports are and the exported model (if any)."""

    verdict: GateVerdict
    reports: Path
    exported: Path | None


def read_site_cases(folder: Path) -> list[SiteCase]:
    """The site cases in ``folder``, sorted by name."""
    if not folder.is_dir():
        raise ValueError(f"site_cases: {folder} is not a folder")
    cases = []
    for name in truth_case_names(folder):
        path = folder / f"{name}.json"
        try:
            metadata = json.loads(path.read_text())
        except ValueError as exc:
            raise ValueError(f"site_cases: {path} is not JSON ({exc})") from None
        case = SiteCase(name, folder, str(metadata.get("created", "")), bool(metadata.get("complete", True)), bool(metadata.get("cortex_labelled", True)))
        missing = [p.name for p in (case.image, case.labels) if not p.exists()]
        if missing:
            raise ValueError(f"site_cases: {name} lacks {', '.join(missing)} in {folder}")
        cases.append(case)
    if not cases:
        raise ValueError(f"site_cases: no site cases in {folder} (NAME.json beside NAME.nii.gz and NAME_labels.nii.gz)")
    return cases


def split_site_cases(cases: list[SiteCase], holdout: int) -> SiteSplit:
    """Hold out the ``holdout`` newest cases (by ``created``, then name); train on the others that are complete and
    have cortex labels."""
    if not 1 <= holdout < len(cases):
        raise ValueError(f"holdout: {holdout} of {len(cases)} site cases; hold out at least 1 and leave at least 1 to train on")
    newest_first = sorted(cases, key=lambda c: (c.created, c.name), reverse=True)
    held_out, rest = sorted(newest_first[:holdout], key=lambda c: c.name), sorted(newest_first[holdout:], key=lambda c: c.name)
    incomplete = [c for c in rest if not c.complete]
    without_cortex = [c for c in rest if c.complete and not c.cortex_labelled]
    training = [c for c in rest if c.complete and c.cortex_labelled]
    if not training:
        raise ValueError(
            f"site_cases: none of the {len(rest)} cases left to train on labels every kidney with its cortex "
            f"({len(incomplete)} incomplete, {len(without_cortex)} without cortex); hold out fewer or add such corrections"
        )
    return SiteSplit(training, incomplete, without_cortex, held_out)


def prepare(request: FinetuneRequest) -> FinetunePlan:
    """Check the request before anything is trained; ValueError naming the argument otherwise."""
    split = split_site_cases(read_site_cases(request.site_cases), request.holdout)
    if not any(case.has_kidney() for case in split.held_out):
        raise ValueError(f"holdout: the {len(split.held_out)} held-out site cases show no kidney, so the gate has nothing to score")
    model = _current_model(request.model)
    from dicomnode.segment.nnunet_trainers.nnUNetTrainerPaper import TRAINERS  # nnU-Net, once the cases are known good

    if request.trainer not in TRAINERS:
        raise ValueError(f"trainer: {request.trainer!r} is not one of {', '.join(sorted(TRAINERS))}")
    if not request.name or Path(request.name).name != request.name or request.name == model.name:
        raise ValueError(f"name: {request.name!r} is not a new model's name (a folder name other than {model.name!r})")
    if (request.models / request.name).exists():
        raise ValueError(f"name: {request.models / request.name} exists; give the candidate a new name")
    taken = [p for sub in ("raw", "preprocessed", "results") for p in (request.work / sub).glob(f"Dataset{request.dataset_id:03d}_*")]
    if taken:
        raise ValueError(f"dataset_id: {taken[0]} exists; give another --dataset-id or --work")
    if request.tolerance_pct < 0:
        raise ValueError(f"tolerance_pct: {request.tolerance_pct} is below 0")
    try:
        localizer = localizer_of(model, request.localizer, request.model.parent)
    except FileNotFoundError as exc:
        raise ValueError(f"localizer: {exc}") from None
    return FinetunePlan(request, model, split, localizer)


def _current_model(folder: Path) -> Model:
    """The model to fine-tune: an exported folder of the project's labels with its fold's final checkpoint."""
    if not (folder / "model.yaml").exists():
        raise ValueError(f"model: {folder} has no model.yaml (an exported model folder, models/NAME)")
    model = Model.from_folder(folder)
    needed = ("plans.json", "dataset.json", "dataset_fingerprint.json", f"fold_{model.fold}/checkpoint_final.pth")
    missing = [name for name in needed if not (folder / name).exists()]
    if missing:
        raise ValueError(f"model: {folder} lacks {', '.join(missing)} (dicomnode-train export writes them)")
    labels = json.loads((folder / "dataset.json").read_text())["labels"]
    if labels != DATASET_LABELS:
        raise ValueError(f"model: {model.name} has labels {labels}, not the project's {DATASET_LABELS}")
    configurations = json.loads((folder / "plans.json").read_text())["configurations"]
    if model.card.get("configuration") not in configurations:
        raise ValueError(f"model: {model.name}'s card names configuration {model.card.get('configuration')!r}, which its plans.json lacks")
    return model


def run_finetune(plan: FinetunePlan) -> FinetuneOutcome:
    """Import, preprocess with the model's plans, fine-tune fold 0, export the candidate to a scratch folder, score both
    models on the held-out cases and export the candidate into ``models`` where the gate lets it through."""
    request, model = plan.request, plan.model
    plans = json.loads((model.folder / "plans.json").read_text())
    configuration = str(model.card["configuration"])
    raw = _import_training_cases(plan)
    preprocessed = request.work / "preprocessed" / raw.name
    preprocess_with_plans(raw, request.dataset_id, request.work / "preprocessed", model.folder, configuration, int(os.environ.get("nnUNet_def_n_proc", "1")))
    ids = [case.name for case in plan.split.training]
    # one fold trained on every training case; nnU-Net's training needs a validation list, so they are it
    (preprocessed / "splits_final.json").write_text(json.dumps([{"train": ids, "val": ids}], indent=2))
    checkpoint = model.folder / f"fold_{model.fold}" / "checkpoint_final.pth"
    # nnU-Net's validation would score the fold on its own training cases: the gate scores it on held-out ones instead
    fold = train_fold(preprocessed, request.trainer, configuration, 0, request.device, pretrained=checkpoint, validate=False)
    reports = request.work / "site_finetune" / request.name / "gate"
    with tempfile.TemporaryDirectory(dir=request.work) as scratch:
        candidate = export_model(fold.folder.parent, 0, Path(scratch), _card(plan, plans, configuration))
        verdict = _score_both(plan, Model.from_folder(candidate), reports)
        if not verdict.ok:
            return FinetuneOutcome(verdict, reports, None)
        shutil.copytree(reports, candidate / "site_finetune")
        _record_gate(candidate / "model.yaml", plan, verdict)
        return FinetuneOutcome(verdict, reports, _install(candidate, request.models))


def _import_training_cases(plan: FinetunePlan) -> Path:
    """The training cases' manifest (in the work folder) and their nnU-Net raw dataset; returns its folder."""
    request = plan.request
    cases = [Case(c.name, c.image, c.labels, group="site") for c in plan.split.training]
    manifest = request.work / "site_finetune" / request.name / "manifest.csv"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(manifest, cases)
    return import_cases(cases, request.work / "raw", request.dataset_id, DATASET_NAME).folder


def _card(plan: FinetunePlan, plans: dict, configuration: str) -> ModelCard:
    """The candidate's card: what it was fine-tuned from and on; use, limits, licence and localizer from the model's."""
    request, card = plan.request, plan.model.card
    return ModelCard(
        name=request.name,
        trainer=request.trainer,
        configuration=configuration,
        fold=0,
        labels=DATASET_LABELS,
        spacing_mm=plans["configurations"][configuration]["spacing"],
        training_data=f"fine-tuned from {plan.model.name} on {len(plan.split.training)} site cases (reader corrections)",
        training={
            "trainer": request.trainer,
            "plan": f"{configuration} of {plan.model.name} (its plans.json), every weight started from its fold_{plan.model.fold}",
            "command": "dicomnode-train finetune (the cases and the gate's figures: site_finetune)",
        },
        intended_use=str(card.get("intended_use", "")),
        not_fit_for=list(card.get("not_fit_for", [])),
        licence=str(card.get("licence", "")),
        localizer=str(card.get("localizer", "")),
    )


def _score_both(plan: FinetunePlan, candidate: Model, reports: Path) -> GateVerdict:
    """Both models through the node's pipeline on the held-out cases: their reports, the gate's verdict and gate.json."""
    names = {c.name for c in plan.split.held_out}
    cases = [case for case in truth_cases(plan.request.site_cases) if case.case_id in names]
    figures = []
    for model, folder in ((plan.model, "current"), (candidate, "candidate")):
        scores = evaluate_real(model, cases, plan.request.device, plan.localizer)
        write_real_report(scores, model.name, reports / folder)
        figures.append(held_out_figures(model.name, scores))
    verdict = gate(figures[0], figures[1], plan.request.tolerance_pct)
    (reports / "gate.json").write_text(json.dumps(asdict(verdict), indent=2))
    return verdict


def held_out_figures(model: str, scores: list[RealScore]) -> HeldOutFigures:
    """The gate's figures of one model's scores: over the sides whose reference shows a kidney."""
    sides = [side for case in scores for side in case.sides if side.reference_ml > 0]
    if not sides:
        raise ValueError("scores: no held-out side shows a kidney in its reference")
    error = float(np.mean([abs(side.volume_error_pct) for side in sides]))
    dice = float(np.mean([side.dice for side in sides]))
    return HeldOutFigures(model, [case.case_id for case in scores], len(sides), round(error, 2), round(dice, 4))


def gate(current: HeldOutFigures, candidate: HeldOutFigures, tolerance_pct: float = 0.0) -> GateVerdict:
    """The candidate passes where its mean |volume error| is at most ``tolerance_pct`` points above the current model's."""
    if tolerance_pct < 0:
        raise ValueError(f"tolerance_pct: {tolerance_pct} is below 0")
    if (candidate.case_ids, candidate.kidneys) != (current.case_ids, current.kidneys):
        raise ValueError(f"candidate: scored on {candidate.case_ids}, not on the current model's held-out cases {current.case_ids}")
    worse_by = round(candidate.volume_error_pct - current.volume_error_pct, 2)
    ok = worse_by <= tolerance_pct
    difference = f"{abs(worse_by):.1f} points {'worse' if worse_by > 0 else 'better'}" if worse_by else "no different"
    reason = (
        f"candidate {'accepted' if ok else 'refused'}: mean |volume error| {candidate.volume_error_pct:.1f} % against "
        f"{current.volume_error_pct:.1f} % for {current.model}, {difference} on {len(current.case_ids)} held-out site cases "
        f"({current.kidneys} kidneys; {tolerance_pct:g} points allowed); mean parenchyma Dice {candidate.dice:.3f} against {current.dice:.3f}"
    )
    return GateVerdict(ok, reason, current, candidate, tolerance_pct, worse_by)


def _record_gate(card_path: Path, plan: FinetunePlan, verdict: GateVerdict) -> None:
    """Put the gate's figures in the candidate's card under ``site_finetune``."""
    card = yaml.safe_load(card_path.read_text())
    split = plan.split
    card["site_finetune"] = {
        "from": plan.model.name,
        "site_cases": str(plan.request.site_cases),
        "trained_on": [c.name for c in split.training],
        "left_out_incomplete": [c.name for c in split.incomplete],
        "left_out_without_cortex": [c.name for c in split.without_cortex],
        "held_out": [c.name for c in split.held_out],
        "figure": GATE_FIGURE,
        "tolerance_pct": verdict.tolerance_pct,
        "current": asdict(verdict.current),
        "candidate": asdict(verdict.candidate),
        "verdict": verdict.reason,
        "reports": {"current": "site_finetune/current/real_ct.md", "candidate": "site_finetune/candidate/real_ct.md"},
    }
    card_path.write_text(yaml.safe_dump(card, sort_keys=False, allow_unicode=True))


def _install(candidate: Path, models: Path) -> Path:
    """Copy the candidate's folder into ``models`` beside it, then rename it into place."""
    target = models / candidate.name
    partial = models / f".{candidate.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(candidate, partial)
    partial.rename(target)
    return target
