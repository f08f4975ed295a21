"""``dicomnode-train``: phantoms or synth -> import -> train -> evaluate -> export, offline; finetune on a site's corrections."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dicomnode.segment.segmenter import TRAINERS_DIR
from training.phantoms import Grid, Phase


def _set_nnunet_paths(work: Path) -> None:
    for name, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        os.environ[name] = str(work / sub)
        (work / sub).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("nnUNet_def_n_proc", str(min(os.cpu_count() or 1, 8)))
    os.environ.setdefault("nnUNet_n_proc_DA", str(min(os.cpu_count() or 1, 8)))
    os.environ["nnUNet_extTrainer"] = str(TRAINERS_DIR)


def _dataset_name(work: Path, dataset_id: int) -> str:
    matches = sorted((work / "raw").glob(f"Dataset{dataset_id:03d}_*"))
    if not matches:
        sys.exit(f"no dataset {dataset_id} under {work / 'raw'}: run 'dicomnode-train import' first")
    return matches[0].name


def cmd_phantoms(args: argparse.Namespace) -> None:
    from training.cases import phantom_cases

    seeds = list(range(args.seed, args.seed + args.count))
    grid = Grid.centred(args.matrix, args.pixel_mm, args.slices, args.slice_mm)
    cases = phantom_cases(args.out, seeds, Phase(args.phase), grid)
    print(f"wrote {len(cases)} phantom cases and {args.out / 'manifest.csv'}")


def cmd_synth(args: argparse.Namespace) -> None:
    from training.synth import DEFAULT_CACHE, DEFAULT_DATA, AnatomySet, OutputGrid, load_sources, write_synth_cases

    data = args.data or DEFAULT_DATA
    kits = None
    if args.kits_cases:
        kits = tuple(sorted(p.name.removesuffix(".nii.gz") for p in (data / "kits19_labels").glob("case_*.nii.gz"))[: args.kits_cases])
    anatomies = AnatomySet(args.anatomies) if args.anatomies in {a.value for a in AnatomySet} else tuple(args.anatomies.split(","))
    sources = load_sources(data, args.cache or DEFAULT_CACHE, kits, anatomies)
    grid = OutputGrid((args.pixel_mm, args.pixel_mm, args.slice_mm), tuple(args.max_shape))
    cases = write_synth_cases(args.out, list(range(args.seed, args.seed + args.count)), sources, grid, args.no_kidney_share)
    print(f"wrote {len(cases)} synthetic cases on {len(sources.anatomies)} anatomies ({len(sources.kidneys)} KiTS19 kidneys) and {args.out / 'manifest.csv'}")


def cmd_holdout(args: argparse.Namespace) -> None:
    from training.holdout_render import holdout_case
    from training.synth import DEFAULT_CACHE, DEFAULT_DATA
    from training.truth_case import write_truth_case

    for seed in range(args.seed, args.seed + args.count):
        write_truth_case(holdout_case(seed, args.data or DEFAULT_DATA, args.cache or DEFAULT_CACHE), args.out, f"holdout_{seed:05d}")
    print(f"wrote {args.count} holdout-renderer cases into {args.out}")


def cmd_repaint(args: argparse.Namespace) -> None:
    from training.repaint import repaint_shared
    from training.synth import DEFAULT_DATA

    names = repaint_shared(args.data or DEFAULT_DATA, args.out, args.seed)
    print(f"wrote {len(names)} repainted arterial cases into {args.out}: {', '.join(names)}")


def cmd_import(args: argparse.Namespace) -> None:
    from training.cases import read_manifest
    from training.dataset_import import Convention, import_cases

    _set_nnunet_paths(args.work)
    cases = [case for manifest in args.manifest for case in read_manifest(manifest)]
    dataset = import_cases(cases, args.work / "raw", args.dataset_id, args.name, Convention(args.convention), args.spacing_mm)
    print(f"imported {len(dataset.groups)} cases into {dataset.folder}")


def cmd_train(args: argparse.Namespace) -> None:
    from training.plans import plan_and_preprocess
    from training.train import select_best, train_fold, write_splits

    _set_nnunet_paths(args.work)
    name = _dataset_name(args.work, args.dataset_id)
    preprocessed = args.work / "preprocessed" / name
    plan_and_preprocess(args.dataset_id, args.work / "preprocessed", name, args.configuration, int(os.environ["nnUNet_def_n_proc"]))
    groups = json.loads((args.work / "raw" / name / "groups.json").read_text())
    write_splits(preprocessed, groups, args.n_folds)
    results = [train_fold(preprocessed, args.trainer, args.configuration, fold, args.device, args.resume, args.pretrained) for fold in args.folds]
    for result in results:
        print(f"fold {result.fold}: " + ", ".join(f"{k} Dice {v:.4f}" for k, v in result.dice.items()))
    best = select_best(results)
    (best.folder.parent / "best_fold.json").write_text(json.dumps({"fold": best.fold, "dice": best.dice}, indent=2))
    print(f"best fold: {best.fold} (mean Dice {best.mean_dice:.4f})")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from training.cases import read_manifest
    from training.evaluate import evaluate_model, record_in_card, write_report

    evaluation = evaluate_model(args.model, read_manifest(args.manifest), args.device, args.mirroring, args.localizer)
    report = write_report(evaluation, args.out)
    if args.update_card:
        record_in_card(args.model / "model.yaml", evaluation, report, args.manifest)
    print(report.read_text())


def cmd_evaluate_real(args: argparse.Namespace) -> None:
    from dicomnode.segment.model import Model, localizer_of
    from training.evaluate_real import RealCase, evaluate_real, record_real_in_card, shared_cases, truth_cases, write_real_report
    from training.synth import DEFAULT_DATA

    if args.cases is not None:
        cases = truth_cases(args.cases)
    elif args.image is not None:
        cases = [RealCase(args.case_id, args.image, args.left, args.right, args.reference)]
    else:
        cases = shared_cases(args.data or DEFAULT_DATA)
    model = Model.from_folder(args.model)
    localizer = localizer_of(model, args.localizer, args.model.parent)
    scores = evaluate_real(model, cases, args.device, localizer)
    report = write_real_report(scores, args.model.name, args.out)
    if args.update_card:
        record_real_in_card(args.model / "model.yaml", scores, report, localizer.name if localizer else "none")
    print(report.read_text())


def cmd_priors(args: argparse.Namespace) -> None:
    from training.priors import write_priors

    summary = write_priors(args.kits, args.out)
    print(f"{summary['kidneys']} kidneys of {summary['cases']} cases; percentiles {summary['percentiles']}")
    for field in ("kidney_ml", "with_tumour_ml", "longest_mm"):
        print(f"  {field}: {summary[field]}")


def cmd_export(args: argparse.Namespace) -> None:
    import yaml

    from training.export import ModelCard, export_model

    _set_nnunet_paths(args.work)
    name = _dataset_name(args.work, args.dataset_id)
    result_folder = args.work / "results" / name / f"{args.trainer}__nnUNetPlans__{args.configuration}"
    fold = args.fold if args.fold is not None else json.loads((result_folder / "best_fold.json").read_text())["fold"]
    plans = json.loads((result_folder / "plans.json").read_text())
    dataset = json.loads((result_folder / "dataset.json").read_text())
    described = yaml.safe_load(args.card.read_text()) if args.card else {}
    card = ModelCard(
        name=args.name,
        trainer=args.trainer,
        configuration=args.configuration,
        fold=fold,
        labels=dataset["labels"],
        spacing_mm=plans["configurations"][args.configuration]["spacing"],
        training_data=described.get("training_data", f"{dataset['numTraining']} cases of {name}"),
        training=described.get("training", {}),
        intended_use=described.get("intended_use", ""),
        not_fit_for=described.get("not_fit_for", []),
        licence=described.get("licence", ""),
        localizer=described.get("localizer", ""),
        findings=described.get("findings", {}),
    )
    print(f"exported {export_model(result_folder, fold, args.models, card)}")


def cmd_finetune(args: argparse.Namespace) -> None:
    from training.finetune import FinetuneRequest, prepare, run_finetune

    _set_nnunet_paths(args.work)
    fields = ("site_cases", "model", "work", "name", "models", "holdout", "trainer", "device", "dataset_id", "tolerance_pct", "localizer")
    request = FinetuneRequest(**{field: getattr(args, field) for field in fields})
    try:
        plan = prepare(request)
    except ValueError as exc:  # the arguments, checked before anything is trained: said as argparse says it
        argument, _, reason = str(exc).partition(": ")
        said = f"argument --{argument.replace('_', '-')}: {reason}" if argument in fields else str(exc)
        print(f"dicomnode-train finetune: error: {said}", file=sys.stderr)
        raise SystemExit(2) from None
    split = plan.split
    print(f"site cases: {len(split.training)} to train on, {len(split.held_out)} held out for the gate ({', '.join(c.name for c in split.held_out)})")
    if split.incomplete:
        print(f"left out of training, a kidney the model found not labelled by the reader: {', '.join(c.name for c in split.incomplete)}")
    if split.without_cortex:
        print(f"left out of training, without cortex labels ({plan.model.name} learns cortex): {', '.join(c.name for c in split.without_cortex)}")
    outcome = run_finetune(plan)
    print(outcome.verdict.reason)
    print(f"reports: {outcome.reports}")
    if outcome.exported is None:
        print(f"nothing exported; {args.model} is as it was")
        raise SystemExit(1)
    print(f"exported {outcome.exported}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicomnode-train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("phantoms", help="write synthetic annotated cases and their manifest")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="first seed; cases use seed, seed+1, ...")
    p.add_argument("--phase", choices=[ph.value for ph in Phase], default=Phase.ARTERIAL.value)
    p.add_argument("--matrix", type=int, default=224)
    p.add_argument("--pixel-mm", type=float, default=1.6)
    p.add_argument("--slices", type=int, default=36)
    p.add_argument("--slice-mm", type=float, default=5.0)
    p.set_defaults(func=cmd_phantoms)

    p = sub.add_parser("holdout", help="arterial test cases from the second renderer (geometric kidneys, never used for training), with truth")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--count", type=int, default=12)
    p.add_argument("--seed", type=int, default=0, help="first seed; cases use seed, seed+1, ...")
    p.add_argument("--data", type=Path, help="folder holding anatomy/ (default: shared/data next to the repository)")
    p.add_argument("--cache", type=Path, help="folder for the completed anatomies (default: ~/.cache/dicomnode-train)")
    p.set_defaults(func=cmd_holdout)

    p = sub.add_parser("repaint", help="semi-real arterial test cases: the shared real CTs' kidneys repainted as arterial, thin and 5 mm, with truth")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path, help="folder holding real_ct/ and real_ct2/ (default: shared/data next to the repository)")
    p.set_defaults(func=cmd_repaint)

    p = sub.add_parser("synth", help="write synthetic cases on real anatomy (KiTS19 kidneys in a real patient) and their manifest")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="first seed; cases use seed, seed+1, ...")
    p.add_argument("--data", type=Path, help="folder holding real_ct/ and kits19_labels/ (default: shared/data next to the repository)")
    p.add_argument("--cache", type=Path, help="folder for the parsed anatomy and kidneys (default: ~/.cache/dicomnode-train)")
    p.add_argument("--kits-cases", type=int, help="use only the first N KiTS19 cases (a faster first run)")
    p.add_argument(
        "--anatomies",
        default="train",
        help="train: every anatomy under anatomy/ but the validation ones, and real_ct's (default); validation: the ones kept out; "
        "shared: real_ct's alone; or names separated by commas (real_ct, word_0014, s0001, ...)",
    )
    p.add_argument("--pixel-mm", type=float, default=1.6)
    p.add_argument("--slice-mm", type=float, default=5.0)
    p.add_argument("--max-shape", type=int, nargs=3, default=[72, 256, 256], metavar=("Z", "Y", "X"))
    p.add_argument(
        "--no-kidney-share",
        type=float,
        help="chance of a field of view without kidney, above or below the kidneys (default 0.15; the other views keep their proportions)",
    )
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("import", help="manifest of annotated cases -> nnU-Net raw dataset")
    p.add_argument("--manifest", type=Path, nargs="+", required=True, help="one or more manifests; case ids must be unique")
    p.add_argument("--work", type=Path, required=True, help="folder for nnU-Net raw/preprocessed/results")
    p.add_argument("--dataset-id", type=int, default=501)
    p.add_argument("--name", default="RenalCortex")
    p.add_argument(
        "--convention",
        choices=["project", "totalsegmentator"],
        default="project",
        help="project: medulla 1, cortex 2 on the series' grid (default); totalsegmentator: RAS, isotropic --spacing-mm, kidney_right 2, kidney_left 3",
    )
    p.add_argument("--spacing-mm", type=float, default=1.5, help="isotropic spacing of the totalsegmentator convention (1.5 total, 3.0 --fast)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("train", help="plan, preprocess and train folds with the paper's recipe")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--dataset-id", type=int, default=501)
    p.add_argument("--configuration", default="3d_fullres", help="3d_fullres (paper), 3d_cpu, 3d_cpu_iso (isotropic), 3d_loc (kidney localizer) or 3d_tiny")
    p.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--n-folds", type=int, default=5)
    p.add_argument(
        "--trainer",
        default="nnUNetTrainerPaper",
        help="the schedule: a trainer named in dicomnode/segment/nnunet_trainers/nnUNetTrainerPaper.py (default: the paper's 200 epochs of 250 iterations)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA where torch finds a GPU, else cpu), cuda or cpu")
    p.add_argument("--resume", action="store_true", help="continue each fold from its latest checkpoint (saved every epoch)")
    p.add_argument("--pretrained", type=Path, help="start from this checkpoint's weights (same plan), e.g. models/NAME/fold_0/checkpoint_final.pth")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="Dice, Jaccard, volume error per case and group; ANOVA; Bland-Altman")
    p.add_argument("--model", type=Path, required=True, help="an exported model folder (models/NAME)")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="auto", help="auto (CUDA where torch finds a GPU, else cpu), cuda or cpu")
    p.add_argument("--mirroring", action="store_true", help="test-time mirroring (8x slower)")
    p.add_argument("--localizer", default="auto", help="as model.localizer: auto (the one the model's card names, beside it), none, or a name")
    p.add_argument("--update-card", action="store_true", help="record the mean figures in the model's model.yaml")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("evaluate-real", help="real CT through the node's pipeline: per-side parenchyma Dice and volume, stray ml, verdict, what is sent")
    p.add_argument("--model", type=Path, required=True, help="an exported model folder (models/NAME)")
    p.add_argument("--localizer", default="auto", help="as model.localizer: auto (the one the model's card names, beside it), none, or a name")
    p.add_argument("--image", type=Path, help="one CT (NIfTI, NRRD or a folder of DICOM slices); default: every real case under --data")
    p.add_argument("--cases", type=Path, help="a folder of cases with truth by construction (written by holdout or repaint), scored with cortex")
    p.add_argument("--left", type=Path, help="left kidney mask on the image's grid (none: no kidney in view)")
    p.add_argument("--right", type=Path, help="right kidney mask on the image's grid")
    p.add_argument("--reference", default="", help="who drew the masks, e.g. 'TotalSegmentator v1 (a model)'")
    p.add_argument("--case-id", default="real_ct")
    p.add_argument("--data", type=Path, help="folder holding real_ct/ and real_ct2/ (default: shared/data next to the repository)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="auto", help="auto (CUDA where torch finds a GPU, else cpu), cuda or cpu")
    p.add_argument("--update-card", action="store_true", help="record the scores in the model's model.yaml under metrics.real_ct")
    p.set_defaults(func=cmd_evaluate_real)

    p = sub.add_parser("priors", help="kidney volume and length percentiles from KiTS19 label maps (the QC limits' source)")
    p.add_argument("--kits", type=Path, required=True, help="folder of KiTS19 case_*.nii.gz label maps")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.set_defaults(func=cmd_priors)

    p = sub.add_parser("export", help="copy a trained fold into models/NAME with model.yaml")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--dataset-id", type=int, default=501)
    p.add_argument("--configuration", default="3d_fullres")
    p.add_argument("--fold", type=int, help="default: the best fold of the last training")
    p.add_argument("--trainer", default="nnUNetTrainerPaper", help="the trainer the model was trained with (its results folder)")
    p.add_argument("--name", required=True)
    p.add_argument("--models", type=Path, default=Path("models"))
    p.add_argument("--card", type=Path, help="YAML with training_data, training, intended_use, not_fit_for")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("finetune", help="fine-tune a model on the node's site cases (reader corrections); export it only if no worse on held-out ones")
    p.add_argument("--site-cases", type=Path, required=True, help="the node's folder of site cases (NAME.nii.gz, NAME_labels.nii.gz, NAME.json, ...)")
    p.add_argument("--model", type=Path, required=True, help="the current model, an exported folder (models/NAME)")
    p.add_argument("--work", type=Path, required=True, help="folder for nnU-Net raw/preprocessed/results and the gate's reports")
    p.add_argument("--name", required=True, help="the candidate's name")
    p.add_argument("--models", type=Path, default=Path("models"), help="where an accepted candidate is exported (default: models)")
    p.add_argument("--holdout", type=int, default=1, help="how many site cases, the newest by 'created', are held out for the gate (default 1)")
    p.add_argument("--trainer", default="nnUNetTrainerPaper_12epochs_100it", help="the schedule (default: 12 epochs of 100 iterations)")
    p.add_argument("--device", default="auto", help="auto (CUDA where torch finds a GPU, else cpu), cuda or cpu")
    p.add_argument("--dataset-id", type=int, default=590, help="the nnU-Net dataset id of the training cases; must be new in --work")
    p.add_argument(
        "--tolerance-pct",
        type=float,
        default=0.0,
        help="how many points of mean |parenchyma volume error| the candidate may be worse by on the held-out cases (default 0)",
    )
    p.add_argument("--localizer", default="auto", help="as model.localizer: auto (the one the model's card names, beside it), none, or a name")
    p.set_defaults(func=cmd_finetune)
    return parser


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if getattr(args, "device", None) == "auto":  # torch is imported only for a command that runs a model
        args.device = "cuda" if _cuda() else "cpu"
    args.func(args)


if __name__ == "__main__":
    main()
