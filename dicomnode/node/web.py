"""The node's read-only web endpoints: ``/healthz``, ``/metrics`` (Prometheus text), a status page of recent jobs,
and ``/history/<job>``, the measurement history of a job's patient.

Loopback by default (``web.host``). Everything shown comes from the store, so figures survive restarts; the pages
show UIDs, verdicts, volumes and timings, never patient names (the store holds none), and patient IDs only where
``log_patient_data`` is on.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily

from dicomnode.base.files import free_mb
from dicomnode.config import NodeConfig
from dicomnode.measured import HistoryEntry, Source
from dicomnode.node.shadow_report import ShadowCollector, shadow_section
from dicomnode.renal import Side, Structure
from dicomnode.store import Job, Store
from dicomnode.store.jobs import MAX_ID
from dicomnode.store.states import DeliveryState, JobDelivery, JobKind, JobState

log = logging.getLogger(__name__)

#: Jobs listed on the status page, newest first.
PAGE_JOBS = 50
#: The style both pages share.
_STYLE = """body { font-family: sans-serif; margin: 1.5em; } table { border-collapse: collapse; }
td, th { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: left; font-size: 0.9em; }
th { background: #eee; } .uid { font-family: monospace; font-size: 0.8em; }"""


@dataclass(frozen=True)
class Health:
    """Whether the node can take and process studies, with one line per failed check."""

    ok: bool
    checks: dict[str, str]  # check -> "ok" or why not


def health(config: NodeConfig, store: Store, receiving: Callable[[], bool], scheduling: Callable[[], bool]) -> Health:
    """The receiver listens, the scheduler runs, the database answers and the storage has room."""
    checks = {}
    checks["receiver"] = "ok" if receiving() else "not listening"
    checks["scheduler"] = "ok" if scheduling() else "not running"
    ok, why = store.healthy()
    checks["database"] = "ok" if ok else why
    free = free_mb(config.path(config.storage))
    low = free < config.min_free_disk_mb
    checks["disk"] = f"{free:.0f} MiB free, below min_free_disk_mb={config.min_free_disk_mb}" if low else "ok"
    return Health(all(v == "ok" for v in checks.values()), checks)


class StoreCollector:
    """Prometheus metrics read from the store at each scrape."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterable[Metric]:
        counts = self.store.counts()
        yield CounterMetricFamily("dicomnode_instances_received", "Instances received and indexed", value=counts.instances_received)
        yield GaugeMetricFamily("dicomnode_instances_stored", "Instances on disk now (retention deletes finished studies)", value=counts.instances_stored)
        yield CounterMetricFamily("dicomnode_instances_refused", "Instances and associations refused", value=counts.refusals)
        yield GaugeMetricFamily("dicomnode_studies_waiting", "Studies not complete yet", value=counts.studies_waiting)
        yield CounterMetricFamily("dicomnode_studies_purged", "Finished studies deleted by retention", value=counts.studies_purged)
        jobs = GaugeMetricFamily("dicomnode_jobs", "Jobs by processing state, outcome and delivery", labels=["state", "outcome", "delivery"])
        for (state, outcome, delivery), n in sorted(counts.jobs.items()):
            jobs.add_metric([state, outcome, delivery], n)
        yield jobs
        queue = GaugeMetricFamily("dicomnode_queue_length", "Work waiting: jobs pending and result files queued", labels=["queue"])
        queue.add_metric(["jobs"], sum(n for (state, _, _), n in counts.jobs.items() if state == JobState.PENDING.value))
        queue.add_metric(["deliveries"], counts.deliveries.get(DeliveryState.QUEUED.value, 0))
        yield queue
        deliveries = GaugeMetricFamily("dicomnode_deliveries", "Result files by delivery state", labels=["state"])
        for state in DeliveryState:
            deliveries.add_metric([state.value], counts.deliveries.get(state.value, 0))
        yield deliveries
        yield CounterMetricFamily("dicomnode_delivery_failures", "Send attempts that did not deliver", value=counts.failed_sends)
        stages = SummaryMetricFamily("dicomnode_stage_seconds", "Seconds spent per pipeline stage", labels=["stage"])
        for stage, (seconds, jobs_timed) in sorted(counts.stage_seconds.items()):
            stages.add_metric([stage], count_value=jobs_timed, sum_value=seconds)
        yield stages


class WebServer:
    """A threaded HTTP server for the endpoints, started and stopped with the node."""

    def __init__(self, config: NodeConfig, store: Store, receiving: Callable[[], bool], scheduling: Callable[[], bool]) -> None:
        self.config, self.store = config, store
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StoreCollector(store))
        if config.shadow.model:
            self.registry.register(ShadowCollector(config, store))
        self._health = lambda: health(config, store, receiving, scheduling)
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        web = self
        handler = type("Handler", (_Handler,), {"web": web})
        self._server = ThreadingHTTPServer((self.config.web.host, self.config.web.port), handler)
        threading.Thread(target=self._server.serve_forever, name="web", daemon=True).start()
        log.info("status page on http://%s:%d/ (/healthz, /metrics)", self.config.web.host, self.config.web.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def respond(self, path: str) -> tuple[int, str, bytes]:
        """Status code, content type and body for a GET of ``path`` (percent-decoded, without its query)."""
        if path == "/healthz":
            state = self._health()
            body = json.dumps({"status": "ok" if state.ok else "unhealthy", "checks": state.checks}).encode()
            return (HTTPStatus.OK if state.ok else HTTPStatus.SERVICE_UNAVAILABLE), "application/json", body
        if path == "/metrics":
            return HTTPStatus.OK, "text/plain; version=0.0.4; charset=utf-8", generate_latest(self.registry)
        if path in ("/", "/index.html"):
            status = status_page(self.store.recent_jobs(PAGE_JOBS), self._health(), self.store, shadow_section(self.config, self.store))
            return HTTPStatus.OK, "text/html; charset=utf-8", status.encode()
        if path.startswith("/history/"):
            digits = path.removeprefix("/history/")
            if not (digits.isascii() and digits.isdigit()):  # isdigit() alone takes "²", which int() refuses
                return HTTPStatus.BAD_REQUEST, "text/plain; charset=utf-8", b"job id: expected digits 0-9\n"
            known = len(digits.lstrip("0")) <= len(str(MAX_ID))  # longer is no job, and int() refuses over 4,300 digits
            page = self.history_page(int(digits)) if known else None
            if page is not None:
                return HTTPStatus.OK, "text/html; charset=utf-8", page.encode()
            return HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"no measurement history for this job\n"
        return HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n"

    def history_page(self, job_id: int) -> str | None:
        """The measurement history of job ``job_id``'s patient; None where the job or its study's result is unknown."""
        try:
            job = self.store.job(job_id)
        except ValueError:
            return None
        entry = self.store.history.of_study(job.study_uid)
        if entry is None:
            return None
        entries = [e for e in self.store.history.of_patient(entry.patient) if e.study_uid != job.study_uid] + self.store.history.both_of_study(job.study_uid)
        entries.sort(key=lambda e: (e.study_date, e.recorded_at))
        return history_page(entry, entries, self.config.log_patient_data)


class _Handler(BaseHTTPRequestHandler):
    web: WebServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        code, content_type, body = self.web.respond(urllib.parse.unquote(self.path.split("?", 1)[0]))
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        log.debug("web: " + format, *args)


def status_page(jobs: list[Job], state: Health, store: Store, shadow: str = "") -> str:
    """A read-only HTML page: health checks and the recent jobs with state, outcome, delivery, verdict, QC, timings;
    then ``shadow``, shadow mode's section, where it is on."""
    e = html.escape
    checks = "".join(f"<li class='{'ok' if v == 'ok' else 'bad'}'>{e(k)}: {e(v)}</li>" for k, v in state.checks.items())
    rows = []
    followed = store.history.studies_recorded(sorted({job.study_uid for job in jobs}))
    for job in jobs:
        deliveries = store.deliveries(job.id)
        sent = sum(d.state is DeliveryState.SENT for d in deliveries)
        dead = [d for d in deliveries if d.state is DeliveryState.DEAD]
        delivery = f"{job.delivery.value} ({sent}/{len(deliveries)} sent)" if deliveries else job.delivery.value
        if dead:
            delivery += f"; {e(dead[0].destination)}: {e(dead[0].last_error or '')}"
        figures = job.measurements or {}
        qc = "; ".join([str(figures.get("qc", "")), *figures.get("not_reported", [])]).strip("; ")
        history = f"<a href='/history/{job.id}'>history</a>" if job.study_uid in followed else ""
        kind = " (reader's correction)" if job.kind is JobKind.CORRECTION else ""
        flag = " bad" if job.delivery is JobDelivery.FAILED or (job.outcome and job.outcome.value == "failed") else ""
        rows.append(
            f"<tr class='job{flag}'><td>{job.id}</td><td class='uid'>{e(job.study_uid)}</td><td>v{job.version}{kind}</td>"
            f"<td>{e(job.state.value)}</td><td>{e(job.outcome.value if job.outcome else '')}</td><td>{delivery}</td>"
            f"<td>{e(job.verdict or '')}</td><td>{e(qc)}</td><td>{sum(job.timings.values()):.1f} s</td>"
            f"<td>{dt.datetime.fromtimestamp(job.updated_at).strftime('%Y-%m-%d %H:%M:%S')}</td><td>{history}</td></tr>"
        )
    body = "".join(rows) or "<tr><td colspan='11'>no jobs yet</td></tr>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">
<title>Renal DICOM node: status</title>
<style>
{_STYLE}
.ok {{ color: #176117; }} .bad, tr.bad td {{ color: #a40000; }}
</style></head><body>
<h1>Renal DICOM node</h1>
<h2 id="health">Health: {"ok" if state.ok else "unhealthy"}</h2><ul>{checks}</ul>
<h2>Recent jobs</h2>
<table id="jobs"><tr><th>Job</th><th>Study</th><th>Version</th><th>State</th><th>Outcome</th><th>Delivery</th>
<th>Verdict</th><th>QC</th><th>Processing</th><th>Updated</th><th>Patient</th></tr>{body}</table>
{shadow}<p>Read-only; refreshes every 10 s. <a href="/metrics">Metrics</a> · <a href="/healthz">Health (JSON)</a></p>
</body></html>
"""


def history_page(entry: HistoryEntry, entries: list[HistoryEntry], identified: bool) -> str:
    """A patient's results over time, oldest study first, ``entry``'s study marked; the patient named only where
    ``identified`` (``log_patient_data``)."""
    e = html.escape
    who = f"Patient ID {e(entry.patient.patient_id)}" + (f" (issuer {e(entry.patient.issuer)})" if entry.patient.issuer else "")
    heading = who if identified else "Patient identifiers hidden (log_patient_data is off)"
    columns = [(s, side) for s in (Structure.PARENCHYMA, Structure.CORTEX) for side in (Side.RIGHT, Side.LEFT)]
    rows = []
    for item in entries:
        volumes = "".join(f"<td>{item.volumes[key]:.1f}</td>" if key in item.volumes else "<td>-</td>" for key in columns)
        qc = "passed" if item.passed else "failed: " + "; ".join(item.qc_findings)[:200]
        name, version = item.algorithms.get(Structure.PARENCHYMA, ("", ""))
        mark = " class='this'" if item.study_uid == entry.study_uid else ""
        rows.append(
            f"<tr{mark}><td>{e(item.study_date)}</td><td class='uid'>{e(item.study_uid)}</td><td>{'withheld' if item.withheld else 'sent'}</td>"
            f"{volumes}<td>{e(qc)}</td><td>{e(f'{name} {version}'.strip() if item.source is Source.NODE else item.verdict)}</td></tr>"
        )
    head = "".join(f"<th>{e(side)} {e(s)} (ml)</th>" for s, side in columns)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Renal DICOM node: measurement history</title>
<style>
{_STYLE} tr.this td {{ font-weight: bold; }}
</style></head><body>
<h1>Measurement history</h1>
<p id="patient">{heading}</p>
<table id="history"><tr><th>Study date</th><th>Study</th><th>Result</th>{head}<th>QC</th><th>Measured by</th></tr>{"".join(rows)}</table>
<p>Studies compared in an SR are those whose QC passed, made by the same model version, or corrected by a reader
(the reader's volumes are then the ones compared). <a href="/">Status</a></p>
</body></html>
"""
