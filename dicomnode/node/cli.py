"""``dicomnode``: serve, status, retry, run a folder offline, export the measurement history, purge a patient, report
shadow mode's agreement."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from dicomnode.config import NodeConfig, SettingError, load_config
from dicomnode.instance import Instance
from dicomnode.measured import Patient
from dicomnode.node.export import MIN_KEY_LENGTH, Format, csv_text, write_table
from dicomnode.node.shadow_report import agreement_of, record_on_card, shadow_lines
from dicomnode.node.site_cases import delete_site_case
from dicomnode.options import Role
from dicomnode.store import Store
from dicomnode.store.database import open_database
from dicomnode.store.states import JobDelivery, JobKind, Outcome

log = logging.getLogger("dicomnode")

#: Seconds between the main thread's checks for SIGTERM or SIGINT while the node serves.
SIGNAL_CHECK_S = 1.0


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.ERROR)  # "skipped: maximum number of running instances" is expected


def cmd_serve(config: NodeConfig, args: argparse.Namespace) -> int:
    from dicomnode.node.service import Node

    node = Node(config, role=Role(args.role))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node.start()
    log.info("node running; results go to %s", ", ".join(d.describe() for d in config.destinations) or "nowhere")
    while not stop.wait(SIGNAL_CHECK_S):  # a signal the kernel hands to another thread reaches Python's handler only
        pass  # when the main thread next runs: waiting without a timeout could miss a SIGTERM for good
    log.info("stopping")
    node.stop()
    return 0


def cmd_status(config: NodeConfig, args: argparse.Namespace) -> int:
    store = Store(open_database(config))
    jobs = store.jobs()
    if args.json:
        report = {
            "jobs": [{**job.__dict__, "deliveries": [{**d.__dict__, "path": str(d.path)} for d in store.deliveries(job.id)]} for job in jobs],
            "waiting": store.waiting(),
            "refusals": [dict(row) for row in store.refusals()],
            "purges": [dict(row) for row in store.purges()],
            "patient_purges": store.history.purges(),
            "shadow": [asdict(a) for a in agreement_of(config, store)],
        }
        print(json.dumps(report, indent=2))
        return 0
    for study, reason in store.waiting().items():
        print(f"study {study}: {reason}")
    if not jobs:
        print("no jobs yet")
    for job in jobs:
        when = dt.datetime.fromtimestamp(job.updated_at).strftime("%Y-%m-%d %H:%M:%S")
        outcome = job.outcome.value.replace("_", " ") if job.outcome else ""
        progress = f"delivery {job.delivery.value}" if job.delivery is not JobDelivery.NONE else ""
        kind = " correction" if job.kind is JobKind.CORRECTION else ""
        print(f"job {job.id}  study {job.study_uid}  v{job.version}{kind}  {job.state.value:<8} {outcome:<10} {progress:<19} {when}  {job.verdict or ''}")
        if job.error:
            print(f"    error: {job.error}")
        if job.measurements:
            texts = ("not_reported", "notes", "qc_findings", "qc_notes", "followup")  # lists of lines, printed one a line
            figures = {k: v for k, v in job.measurements.items() if k not in (*texts, "sent", "delivered")}
            if "delivered" in job.measurements:
                print(f"    delivered: {', '.join(job.measurements['delivered']) or 'nothing'}")
            print("    " + ", ".join(f"{k}={v}" for k, v in figures.items()))
            for line in [line for key in texts for line in job.measurements.get(key, [])]:
                print(f"    {line}")
        for delivery in store.deliveries(job.id):
            detail = f" ({delivery.last_error})" if delivery.last_error else ""
            print(f"    -> {delivery.destination}: {delivery.path.name} {delivery.state.value}, {delivery.attempts} tries{detail}")
    refusals = store.refusals()
    if refusals:
        print(f"{len(refusals)} instances refused:")
        for row in refusals[-20:]:
            print(f"    from {row['calling_ae']}: {row['reason']}")
    purges = store.purges()
    if purges:
        print(f"{len(purges)} finished studies deleted by retention; the last: {purges[-1]['study_uid']} ({purges[-1]['reason']})")
    for purge in store.history.purges():
        when = dt.datetime.fromtimestamp(purge["purged_at"]).strftime("%Y-%m-%d %H:%M:%S")
        print(f"patient purge {when}: {purge['results']} results deleted from the measurement history ({purge['reason']})")
    for line in shadow_lines(config, store):
        print(line)
    return 0


def cmd_retry(config: NodeConfig, args: argparse.Namespace) -> int:
    store = Store(open_database(config))
    if args.job is not None:
        try:
            store.job(args.job)
        except ValueError:
            print(f"--job: no job {args.job}", file=sys.stderr)
            return 2
    count = store.requeue_dead(args.job)
    print(f"{count} parked deliveries queued again; a running node sends them at its next tick")
    return 0


def cmd_run(config: NodeConfig, args: argparse.Namespace) -> int:
    """Process a folder of DICOM files offline, one study at a time; results and a summary go to --out."""
    from dicomnode.node.run import process_job
    from dicomnode.segment.configured import load_segmenter

    studies: dict[str, list[Instance]] = defaultdict(list)
    for seq, path in enumerate(sorted(p for p in args.folder.rglob("*") if p.is_file())):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            log.warning("skipping %s: not readable DICOM (%s)", path, exc)
            continue
        study_uid, series_uid = str(ds.get("StudyInstanceUID", "") or ""), str(ds.get("SeriesInstanceUID", "") or "")
        if not study_uid or not series_uid:
            log.warning("skipping %s: no Study/Series Instance UID in the data set", path)
            continue
        studies[study_uid].append(Instance(seq, str(ds.get("SOPInstanceUID", "")), study_uid, series_uid, str(ds.get("SOPClassUID", "")), path))
    if not studies:
        print(f"no processable DICOM study in {args.folder}", file=sys.stderr)
        return 2
    segmenter = load_segmenter(config)
    summary = {}
    for study_uid, instances in studies.items():
        ran = process_job(f"study {study_uid}", instances, config, segmenter, args.out / study_uid)
        processed = ran.processed
        summary[study_uid] = {"outcome": processed.outcome.value, **processed.record(), "results": [str(f.path) for f in ran.saved]}
        print(f"study {study_uid}: {processed.outcome.value} ({processed.verdict})")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0 if all(s["outcome"] != Outcome.FAILED.value for s in summary.values()) else 1


def cmd_export(config: NodeConfig, args: argparse.Namespace) -> int:
    """The measurement history as a table, one row per result."""
    kind = Format(args.format)
    if kind is Format.PARQUET and args.out is None:
        print("--out: a Parquet table needs a file to go to", file=sys.stderr)
        return 2
    if args.out is not None and not args.out.parent.is_dir():
        print(f"--out: folder {args.out.parent} does not exist", file=sys.stderr)
        return 2
    if args.out is not None and args.out.is_dir():
        print(f"--out: {args.out} is a folder; name the file to write", file=sys.stderr)
        return 2
    key = None
    if args.pseudonymise:
        secret = os.environ.get(config.history.pseudonym_key_env, "")
        if len(secret) < MIN_KEY_LENGTH:
            variable = config.history.pseudonym_key_env
            print(f"--pseudonymise: set {variable} to a key of {MIN_KEY_LENGTH} characters or more (history.pseudonym_key_env)", file=sys.stderr)
            return 2
        key = secret.encode()
    store = Store(open_database(config))
    entries = store.history.entries(args.since.strftime("%Y%m%d") if args.since else "", qc_passed=args.qc == "passed")
    if args.out is None:
        sys.stdout.write(csv_text(entries, key))
        return 0
    count = write_table(entries, args.out, kind, key)
    print(f"{count} results written to {args.out}" + (" (identifiers pseudonymised)" if key else ""))
    return 0


def cmd_purge_patient(config: NodeConfig, args: argparse.Namespace) -> int:
    """Delete one patient's results from the measurement history and their site cases (the patient withdrew consent),
    and log it."""
    store = Store(open_database(config))
    patient = Patient(args.patient_id, args.issuer)
    count = store.history.purge_patient(patient, args.reason)
    cases = store.forget_site_cases(patient)
    for name in cases:
        delete_site_case(config.path(config.corrections.site_cases), name)
    whom = f" (Patient ID {args.patient_id!r}, issuer {args.issuer!r})" if config.log_patient_data else ""
    log.warning("patient purge: %d results deleted from the measurement history, %d site cases deleted%s: %s", count, len(cases), whom, args.reason)
    print(f"{count} results deleted from the measurement history, {len(cases)} site cases deleted")
    return 0


def cmd_shadow_report(config: NodeConfig, args: argparse.Namespace) -> int:
    """Shadow mode's agreement per structure; with --record, written into the candidate's model card."""
    if not config.shadow.model:
        print("shadow mode is off: shadow.model names no candidate", file=sys.stderr)
        return 2
    store = Store(open_database(config))
    for line in shadow_lines(config, store):
        print(line)
    if args.record:
        try:
            card = record_on_card(config, store, dt.date.today())
        except ValueError as exc:
            print(f"--record: {exc}", file=sys.stderr)
            return 2
        print(f"recorded in {card} (shadow:)")
    return 0


def _date(value: str) -> dt.date:
    for pattern in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(value, pattern).date()
        except ValueError:
            continue
    raise argparse.ArgumentTypeError(f"{value!r} is not a date (YYYY-MM-DD)")


DEFAULT_CONFIG = Path("config.yaml")


def build_parser() -> argparse.ArgumentParser:
    # --config and -v are accepted before and after the subcommand
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="YAML configuration (default: ./config.yaml)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(prog="dicomnode", description=__doc__, parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the DICOM node", parents=[common])
    p.add_argument(
        "--role", choices=[role.value for role in Role], default=Role.ALL.value,
        help="all (default): the whole node in one process; in a cluster (database: postgresql://...) one part of it",
    )  # fmt: skip
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("status", help="list studies and jobs with their state, verdict and deliveries", parents=[common])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("retry", help="queue parked (dead-letter) deliveries again", parents=[common])
    p.add_argument("--job", type=int, help="only this job's deliveries")
    p.set_defaults(func=cmd_retry)
    p = sub.add_parser("run", help="process a folder of DICOM files offline", parents=[common])
    p.add_argument("folder", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("export", help="write the measurement history as a table, one row per result", parents=[common])
    p.add_argument("--format", choices=[f.value for f in Format], default=Format.CSV.value)
    p.add_argument("--out", type=Path, help="the file to write, in a folder that exists (default: CSV to standard output)")
    p.add_argument("--since", type=_date, help="only studies of this date (YYYY-MM-DD) or later")
    p.add_argument("--qc", choices=["all", "passed"], default="all", help="passed: only results whose every structure passed QC")
    p.add_argument("--pseudonymise", action="store_true", help="identifiers as keyed hashes; the key comes from history.pseudonym_key_env")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("purge-patient", help="delete a patient's results from the measurement history (consent withdrawn)", parents=[common])
    p.add_argument("--patient-id", required=True, help="Patient ID (0010,0020) as the images give it")
    p.add_argument("--issuer", default="", help="Issuer of Patient ID (0010,0021), where the images give one")
    p.add_argument("--reason", default="the patient withdrew consent", help="recorded with the purge")
    p.set_defaults(func=cmd_purge_patient)
    p = sub.add_parser("shadow-report", help="shadow mode: the candidate's agreement with the live model per structure", parents=[common])
    p.add_argument("--record", action="store_true", help="write it into the candidate's model card (models/NAME/model.yaml, under shadow:)")
    p.set_defaults(func=cmd_shadow_report)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.config, args.verbose = getattr(args, "config", DEFAULT_CONFIG), getattr(args, "verbose", False)
    _setup_logging(args.verbose)
    if not args.config.exists():
        sys.exit(f"configuration {args.config} not found")
    try:
        config = load_config(args.config)
    except ValueError as exc:
        sys.exit(f"configuration error: {exc}")
    try:
        sys.exit(args.func(config, args))
    except SettingError as exc:
        sys.exit(f"configuration error: {args.config}: {exc}")


if __name__ == "__main__":
    main()
