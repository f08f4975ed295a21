"""Node configuration: validated models read from YAML (``dicomnode serve`` reads ``config.yaml`` by default); the values
a setting may take are Enums in ``options.py``.

Every check of a setting lives here, on the model that holds it: a field's own type and range on the field, checks
across fields in the model's validator. A file is read strictly (``port: "104"`` is refused, not converted); code
that builds a model (tests, ``dataclasses.replace``) gets the same checks with Python's conversions (an Enum from its
value, a tuple from a list).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, ConfigDict, Discriminator, Tag, TypeAdapter, ValidationError, model_validator
from pydantic.dataclasses import dataclass

from dicomnode.options import Auth, CortexMethod, OnFail, Orientation, OutputFormat, ParenchymaSource, Protocol, Runtime
from dicomnode.renal import Side, Structure
from dicomnode.renal_limits import KIDNEY_ANTEROPOSTERIOR_MM, KIDNEY_HU, KIDNEY_LATERAL_MM, KIDNEY_ML

#: Every settings model: frozen, and a key it does not know is an error.
_MODEL = ConfigDict(extra="forbid", allow_inf_nan=False)


class Problems(ValueError):
    """What a model's validator found wrong, one ``key: why`` per line, keys relative to the model."""

    def __init__(self, found: list[str]) -> None:
        super().__init__("\n".join(found))
        self.found = found


class SettingError(ValueError):
    """A setting that loaded but cannot be acted on when it is used (a model folder that is not there): ``key: why``."""


def _raise_found(found: list[str]) -> None:
    if found:
        raise Problems(found)


def valid_ae_title(value: str) -> tuple[bool, str]:
    """Whether ``value`` is an AE title (PS3.5 Table 6.2-1, VR AE: at most 16 characters of the default character
    repertoire, no backslash, no control characters, not only spaces), and why not."""
    if not value.strip():
        return False, "is empty"
    if len(value) > 16:
        return False, "must not exceed 16 characters"
    if "\\" in value or any(not " " <= c <= "~" for c in value):
        return False, "holds a backslash, a control character or a character outside ASCII"
    return True, ""


def valid_port(value: int) -> tuple[bool, str]:
    """Whether ``value`` is a TCP port a peer can reach (1-65535), and why not."""
    return (True, "") if 1 <= value <= 65535 else (False, "is not 1-65535")


def _checked(validator: Callable[[Any], tuple[bool, str]]) -> AfterValidator:
    """A field check from a validator that returns (ok, reason); the reason follows the value in the error."""

    def check(value: Any) -> Any:
        ok, why = validator(value)
        if not ok:
            raise ValueError(f"{value!r} {why}")
        return value

    return AfterValidator(check)


def _rule(ok: Callable[[Any], bool], why: str) -> AfterValidator:
    """A field check: ``why``, and the value, is the error where ``ok(value)`` is false."""

    def check(value: Any) -> Any:
        if not ok(value):
            raise ValueError(f"{why}, got {list(value) if isinstance(value, tuple) else value!r}")
        return value

    return AfterValidator(check)


AETitle = Annotated[str, _checked(valid_ae_title)]
Port = Annotated[int, _checked(valid_port)]
NonNegative = Annotated[float, _rule(lambda v: v >= 0, "must not be negative")]
Positive = Annotated[float, _rule(lambda v: v > 0, "must be positive")]
AtLeastOne = Annotated[int, _rule(lambda v: v >= 1, "must be at least 1")]
Range = Annotated[tuple[float, float], _rule(lambda v: v[0] < v[1], "expected [low, high] with low < high")]
Share = Annotated[float, _rule(lambda v: 0 <= v <= 1, "must be in [0, 1]")]
Step = Annotated[float, _rule(lambda v: 0 < v <= 1, "must be in (0, 1]")]


@dataclass(frozen=True, config=_MODEL)
class TLSConfig:
    """Optional DICOM TLS; both receive and send use it where ``enabled``."""

    enabled: bool = False
    certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""  # peers must present a certificate signed by these


@dataclass(frozen=True, config=_MODEL)
class DimseDestination:
    """A DICOM AE that results are sent to by C-STORE (``protocol: dimse``, the default)."""

    name: str
    ae_title: str = ""
    host: str = ""
    port: int = 0
    tls: bool = False  # DICOM TLS with the node's tls settings
    storage_commitment: bool = False  # a result is delivered only when the destination reports it committed
    formats: tuple[OutputFormat, ...] = (OutputFormat.SEG, OutputFormat.SR)
    protocol: Literal["dimse"] = "dimse"

    @model_validator(mode="after")
    def _check(self) -> DimseDestination:
        checks = (("ae_title", valid_ae_title(self.ae_title)), ("port", valid_port(self.port)))
        found = [f"{key}: {getattr(self, key)!r} {why}" for key, (ok, why) in checks if not ok]
        _raise_found(found)
        return self

    def describe(self) -> str:
        """The destination as the log names it."""
        return f"{self.name} ({self.ae_title}@{self.host}:{self.port})"


@dataclass(frozen=True, config=_MODEL)
class StowRsDestination:
    """A DICOMweb service that results are sent to by STOW-RS (``protocol: stow-rs``): one POST per batch to
    ``url`` + ``/studies``."""

    name: str
    url: str = ""  # the service root, e.g. https://pacs.example.org/dicom-web
    auth: Auth = Auth.NONE
    credentials_env: str = ""  # the environment variable holding the credentials for ``auth``
    formats: tuple[OutputFormat, ...] = (OutputFormat.SEG, OutputFormat.SR)
    protocol: Literal["stow-rs"] = "stow-rs"

    @model_validator(mode="after")
    def _check(self) -> StowRsDestination:
        found = []
        if not self.url.startswith(("http://", "https://")):
            found.append(f"url: {self.url!r} is not an http(s) URL")
        if self.auth is not Auth.NONE and not self.credentials_env:
            found.append(f"credentials_env: names no environment variable for {self.auth.value} auth")
        _raise_found(found)
        return self

    def describe(self) -> str:
        """The destination as the log names it."""
        return f"{self.name} ({self.url})"


def _protocol_of(value: Any) -> str:
    """Which kind of destination ``value`` is: its ``protocol``, DIMSE where it names none."""
    found = value.get("protocol", Protocol.DIMSE.value) if isinstance(value, dict) else getattr(value, "protocol", Protocol.DIMSE.value)
    return str(found.value if isinstance(found, Protocol) else found)


#: A destination, by its protocol: adding a protocol is a model here (and its sender in ``outbound/send.py``).
Destination = Annotated[
    Annotated[DimseDestination, Tag(Protocol.DIMSE.value)] | Annotated[StowRsDestination, Tag(Protocol.STOW_RS.value)],
    Discriminator(_protocol_of),
]
#: The tags of :data:`Destination`, which a validation error's location names between a destination and its key.
_DESTINATION_TAGS = frozenset(p.value for p in Protocol)


@dataclass(frozen=True, config=_MODEL)
class Peer:
    """A DICOM AE the node opens associations to: here, where a Storage Commitment requester takes its report."""

    ae_title: AETitle
    host: str
    port: Port


@dataclass(frozen=True, config=_MODEL)
class Delivery:
    """Retry policy for sending results."""

    max_attempts: AtLeastOne = 8
    backoff_s: NonNegative = 5.0
    max_backoff_s: NonNegative = 600.0
    timeout_s: Positive = 30.0
    commitment_timeout_s: Positive = 300.0  # a destination with storage_commitment that has not reported by then: sent again


@dataclass(frozen=True, config=_MODEL)
class ExternalModelConfig:
    """An nnU-Net v2 results folder trained elsewhere; defaults are those of TotalSegmentator's ``total`` organ model
    (Dataset291_TotalSegmentator_part1_organs_1559subj, trainer nnUNetTrainerNoMirroring, 3d_fullres)."""

    folder: str = ""  # the folder holding dataset.json, plans.json and fold_<fold>/ (relative to this file's folder)
    name: str = "TotalSegmentator total"  # named in the SEG and SR
    version: str = ""  # e.g. the weights' release, named in the SEG and SR
    fold: str = "0"
    checkpoint: str = "checkpoint_final.pth"
    right_label: int = 2  # TotalSegmentator total: kidney_right
    left_label: int = 3  # TotalSegmentator total: kidney_left
    orientation: Orientation = Orientation.RAS  # RAS: TotalSegmentator (nibabel canonical); LPS: DICOM patient axes
    spacing_mm: NonNegative = 1.5  # isotropic resampling before prediction (TotalSegmentator: 1.5 total, 3.0 --fast); 0: none
    tile_step_size: Step = 0.8  # TotalSegmentator's for its total models
    licence: str = "Apache-2.0 (TotalSegmentator's total task weights)"

    @model_validator(mode="after")
    def _check(self) -> ExternalModelConfig:
        _raise_found(["left_label: is the right_label"] if self.right_label == self.left_label else [])
        return self


def missing_model_files(folder: Path, fold: str, checkpoint: str) -> list[str]:
    """What an nnU-Net v2 results folder lacks to be loaded with ``fold`` and ``checkpoint``, one line each."""
    return [f"{folder / name} not found" for name in ("dataset.json", "plans.json", f"fold_{fold}/{checkpoint}") if not (folder / name).is_file()]


@dataclass(frozen=True, config=_MODEL)
class ModelConfig:
    """Which model segments and how."""

    folder: str = "models"
    name: str = "renal-synth3-cpu"
    device: Literal["auto", "cuda", "cpu"] = "auto"  # auto (cuda if present), cuda or cpu
    mirroring: bool = False  # test-time mirroring: better, several times slower (benchmarks/inference.py)
    tile_step_size: Step = 0.5
    cascade: bool = True  # without a localizer: a coarse pass without tile overlap, then the usual pass around its largest components (docs/pipeline.md)
    localizer: str = (
        "auto"  # a model in ``folder`` that finds the kidneys, the model then runs only around them: auto (the one the model's card names), none, or a name
    )
    runtime: Runtime = Runtime.AUTO
    parenchyma: ParenchymaSource = ParenchymaSource.PROJECT
    cortex: CortexMethod = CortexMethod.MODEL  # inside an external model's parenchyma (see docs/external-models.md for the figures)
    external: ExternalModelConfig = field(default_factory=ExternalModelConfig)

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        found = []
        if self.runtime is Runtime.ONNXRUNTIME and self.device == "cuda":
            found.append("runtime: onnxruntime runs on the CPU only; the device is cuda")
        if self.parenchyma is ParenchymaSource.EXTERNAL and not self.external.folder:
            found.append("external.folder: names no folder (an nnU-Net v2 results folder is needed)")
        _raise_found(found)
        return self


@dataclass(frozen=True, config=_MODEL)
class SelectionRules:
    """Series selection rules; keywords match SeriesDescription / ProtocolName, case-insensitively."""

    arterial_keywords: tuple[str, ...] = (
        "arterial",
        "arteriell",
        "art",
        "corticomedullary",
        "cortical",
        "cm phase",
        "angio",
        "动脉期",
        "动脉",
        "皮质期",
        "皮髓质期",
    )
    other_phase_keywords: tuple[str, ...] = (
        "native",
        "plain",
        "non-contrast",
        "noncontrast",
        "nativ",
        "unenhanced",
        "pre",
        "venous",
        "portal",
        "nephrographic",
        "delayed",
        "excretory",
        "urographic",
        "late",
        "平扫",
        "静脉期",
        "门脉期",
        "实质期",
        "排泄期",
        "延迟期",
    )
    arterial_window_s: Range = (15.0, 50.0)
    min_slices: AtLeastOne = 20
    preferred_slice_mm: Positive = 5.0  # between thin and thick reconstructions of one phase (the paper's model: 5 mm)
    parenchyma_fallback: bool = True  # no arterial series: the best other CT series gives parenchyma volumes only; false: no result


@dataclass(frozen=True, config=_MODEL)
class QCConfig:
    """Plausibility limits of the QC gate (see ``dicomnode/analysis/qc.py``); each (low, high) pair is inclusive.

    Volume and length limits come from the 416 hand-drawn kidneys of KiTS19 (``dicomnode-train priors``, figures in
    ``training/kits19_priors.json``):
    tumour excluded 43-430 ml; longest side up to 221 mm with tumour, 175 mm at the 99th percentile.
    """

    on_fail: OnFail = OnFail.WITHHOLD
    kidney_ml: Range = KIDNEY_ML  # parenchyma per kidney
    max_extent_mm: float = 200.0  # longest side of a kidney's bounding box
    max_stray_ml: float = 20.0  # predicted kidney outside the two kidneys kept
    kidney_hu: Range = KIDNEY_HU  # mean attenuation of the parenchyma
    cortex_share: Range = (0.2, 0.9)  # cortex / parenchyma
    min_corticomedullary_hu: float = 15.0  # cortex minus medulla, checked unless the image shows another phase
    max_outline_medulla_share: Share = 0.08  # outer surface labelled medulla, checked in the arterial phase; more: it takes in a neighbour
    max_denser_share: Share = 0.02  # share of a kidney 20 HU denser than its median, checked without contrast; more: it takes in a neighbour
    max_left_out_share: Share = 0.1  # renal-density tissue inside a kidney's outline but outside its mask, as a share of it; more: part left out
    max_volume_range_share: Positive = 0.15  # the parenchyma's range between the model's probability thresholds (band.py), as a share of it; more: withheld
    max_cortex_range_share: Positive = 0.2  # the cortex's range, as a share of it; more: cortex and medulla withheld
    max_thick_cortex_share: Share = 0.1  # share of the cortex deeper than 6 mm inside it; more: a thicker neighbour taken in as cortex
    lateral_mm: Range = KIDNEY_LATERAL_MM  # kidney centre to the side of the spine's centre
    anteroposterior_mm: Range = KIDNEY_ANTEROPOSTERIOR_MM  # kidney centre from the spine's centre (+: behind)
    min_spine_share: Share = 0.3  # share of a kidney's slices on which the vertebral column must be found
    max_height_difference_mm: float = 100.0  # between the two kidneys' centres
    max_cut_share: Share = 0.3  # a kidney whose face on an image edge is at most this share of its largest cross-section: a lower bound; more: withheld
    per_structure: bool = True  # parenchyma sent when its own checks pass, cortex and medulla only when theirs pass too; false: all or nothing
    per_kidney: bool = (
        True  # a kidney whose own checks (and the study's) pass is sent whatever the other side shows; false: a finding on either side withholds both
    )
    require_arterial_image: bool = True  # cortex and medulla only where the image check finds the arterial phase; false: also where it finds none


@dataclass(frozen=True, config=_MODEL)
class Retention:
    """When received instances and results are deleted (see ``dicomnode/node/retention.py``): never before every
    destination confirmed a study's results; a job not done or a delivery queued or parked keeps the study."""

    days: NonNegative = 30.0  # after a finished study's last activity; 0 keeps studies until disk pressure
    free_disk_mb: int = 2048  # below this much free space the least recently active finished studies go first
    interval_s: Positive = 300.0  # how often the cleaner runs


@dataclass(frozen=True, config=_MODEL)
class HistoryConfig:
    """The measurement history (see ``dicomnode/store/history.py``): each patient's results, kept after retention
    deletes the images, deleted only by ``dicomnode purge-patient``."""

    enabled: bool = True  # record each result and compare it with the patient's earlier ones; false: neither
    pseudonym_key_env: str = "DICOMNODE_PSEUDONYM_KEY"  # the environment variable with the key of ``dicomnode export --pseudonymise``


@dataclass(frozen=True, config=_MODEL)
class CorrectionsConfig:
    """Readers' corrections (``docs/conformance.md``, "Corrections"): a SEG sent to the node for a study whose result
    it made, checked against the series it measured, gives a reader-corrected SR for the destinations and a site case
    for ``dicomnode-train finetune``."""

    enabled: bool = True  # false: a SEG is stored like any other instance, as before
    labels: dict[str, tuple[Structure, Side]] = field(
        default_factory=dict
    )  # Segment Label -> (structure, side), for viewers that do not code segments as the node does
    withdraw_model_results: bool = False  # a correction also rejects the model's results sent for its study (IHE IOCM); false: they stay in the PACS
    site_cases: str = "var/site_cases"  # where each correction is kept as a training case; "": not kept
    pseudonymise: bool = True  # a site case names its patient, study and series by keyed hashes (the key of history.pseudonym_key_env); false: as in the images


@dataclass(frozen=True, config=_MODEL)
class WebConfig:
    """The read-only status page, ``/healthz`` and ``/metrics`` (see ``dicomnode/node/web.py``)."""

    enabled: bool = True
    host: str = "127.0.0.1"  # loopback: the page lists study UIDs and verdicts; put a proxy with authentication in front to share it
    port: Port = 8089


@dataclass(frozen=True, config=_MODEL)
class ClusterConfig:
    """Several processes on one PostgreSQL database (``database: postgresql://...``) and one shared ``storage``."""

    name: str = ""  # this machine's name among the cluster's receivers and workers (default: its host name)
    lease_s: Positive = 60.0  # a worker's hold on its job, renewed every lease_s / 4; a job whose lease runs out goes to another worker
    receiver_timeout_s: Positive = 30.0  # a receiver silent this long: its open associations no longer hold studies back
    database_wait_s: Positive = 5.0  # how long a statement waits for a PostgreSQL connection; with the database down, C-STORE gets 0xA700 after this


@dataclass(frozen=True, config=_MODEL)
class ShadowConfig:
    """Shadow mode (see ``dicomnode/node/shadow.py``): a candidate model runs on each live study after the live
    result is queued; its results are compared with the live ones and recorded, never sent."""

    model: str = ""  # the candidate, a model folder in ``model.folder``; empty: shadow mode off
    localizer: str = "auto"  # the candidate's localizer, as ``model.localizer``: auto (the one its card names), none, or a name
    last_n: AtLeastOne = 20  # the status page, ``dicomnode status`` and the metrics show the agreement over this many latest studies


@dataclass(frozen=True, config=_MODEL)
class NodeConfig:
    """Everything ``dicomnode serve`` needs."""

    ae_title: AETitle = "RENALNODE"
    host: str = "127.0.0.1"
    port: Port = 11112
    storage: str = "var/storage"
    database: str = "var/dicomnode.sqlite"
    results: str = "var/results"
    quiet_period_s: NonNegative = 10.0
    max_wait_s: float = 120.0  # a study whose association stays open is processed this long after its last instance
    tick_s: Positive = 1.0
    allowed_callers: tuple[str, ...] = ()  # calling AE titles; empty: any
    allowed_addresses: tuple[str, ...] = ()  # peer IP addresses; empty: any
    check_called_ae: bool = True  # refuse associations whose called AE title is not ``ae_title``
    max_associations: AtLeastOne = 20  # associations served at once; more are refused (local limit exceeded) and logged
    min_free_disk_mb: int = 500
    max_instance_mb: AtLeastOne = 2048  # larger instances are refused with 0xA700 after they arrived (on disk, not in memory)
    network_timeout_s: Positive = 60.0  # an association silent this long is closed; its unfinished instance is discarded
    instance_timeout_s: float = 600.0  # a C-STORE (command and data set) must arrive within this, however it trickles in
    log_patient_data: bool = False
    send_text_sr_without_result: bool = False
    tls: TLSConfig = field(default_factory=TLSConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    selection: SelectionRules = field(default_factory=SelectionRules)
    qc: QCConfig = field(default_factory=QCConfig)
    delivery: Delivery = field(default_factory=Delivery)
    retention: Retention = field(default_factory=Retention)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    corrections: CorrectionsConfig = field(default_factory=CorrectionsConfig)
    web: WebConfig = field(default_factory=WebConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    shadow: ShadowConfig = field(default_factory=ShadowConfig)
    destinations: tuple[Destination, ...] = ()
    commitment_peers: tuple[Peer, ...] = ()  # where Storage Commitment requesters that are not destinations take their reports
    base_dir: Path = Path(".")  # the configuration file's folder (set by load_config), not a setting

    @model_validator(mode="after")
    def _check(self) -> NodeConfig:
        found = []

        def check(ok: bool, key: str, why: str) -> None:
            if not ok:
                found.append(f"{key}: {why}")

        check(not self.web.enabled or self.web.port != self.port or self.web.host != self.host, "web.port", "is the DICOM port")
        check(self.max_wait_s >= self.quiet_period_s, "max_wait_s", f"{self.max_wait_s:g} is shorter than quiet_period_s")
        check(self.instance_timeout_s >= self.network_timeout_s, "instance_timeout_s", "must be at least network_timeout_s")
        check(self.cluster.lease_s >= 4 * self.tick_s, "cluster.lease_s", f"{self.cluster.lease_s:g} is shorter than 4 ticks")
        check(self.cluster.receiver_timeout_s >= 3 * self.tick_s, "cluster.receiver_timeout_s", "is shorter than 3 ticks")
        check(self.shadow.model != self.model.name, "shadow.model", f"{self.shadow.model!r} is the live model (model.name)")
        check(
            self.retention.free_disk_mb > self.min_free_disk_mb,
            "retention.free_disk_mb",
            f"{self.retention.free_disk_mb} must be above min_free_disk_mb={self.min_free_disk_mb}, so that studies are deleted before C-STORE is refused",
        )
        names = [d.name for d in self.destinations]
        for name in sorted({n for n in names if names.count(n) > 1}):
            found.append(f"destinations: the name {name!r} is used {names.count(name)} times")
        for n, d in enumerate(self.destinations):
            if isinstance(d, DimseDestination):
                check(not d.tls or self.tls.certificate != "", f"destinations[{n}].tls", "needs tls.certificate and tls.private_key")
            elif isinstance(d, StowRsDestination) and d.auth is not Auth.NONE and d.credentials_env:
                check(d.credentials_env in os.environ, f"destinations[{n}].credentials_env", f"{d.credentials_env} is not set")
        if self.tls.enabled or any(isinstance(d, DimseDestination) and d.tls for d in self.destinations):
            for key in ("certificate", "private_key", "ca_certificates"):
                value = getattr(self.tls, key)
                check(key == "ca_certificates" and not value or bool(value) and self.path(value).is_file(), f"tls.{key}", f"file {value!r} not found")
        if self.model.parenchyma is ParenchymaSource.EXTERNAL and self.model.external.folder:
            external = self.model.external
            found += [f"model.external.folder: {why}" for why in missing_model_files(self.path(external.folder), external.fold, external.checkpoint)]
        _raise_found(found)
        return self

    def wants(self, output: OutputFormat) -> bool:
        """Whether any destination receives ``output``."""
        return any(output in d.formats for d in self.destinations)

    def path(self, value: str) -> Path:
        """A configured path, relative to the configuration file's folder."""
        return Path(value) if Path(value).is_absolute() else self.base_dir / value


#: Reads a whole configuration.
_NODE = TypeAdapter(NodeConfig)

#: What a file's value should have been, by pydantic's error type.
_EXPECTED = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "finite_number": "expected a finite number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected text",
    "tuple_type": "expected a list",
    "list_type": "expected a list",
    "dataclass_type": "expected a mapping of settings",
    "too_short": "too few values",
    "too_long": "too many values",
}


def _key(loc: tuple[str | int, ...]) -> str:
    """A setting's name as the file spells it: ``destinations[0].port`` (a destination's protocol tag left out)."""
    loc = tuple(part for n, part in enumerate(loc) if not (n and isinstance(loc[n - 1], int) and part in _DESTINATION_TAGS))
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def messages(error: ValidationError) -> list[str]:
    """One ``key: why`` line for each thing wrong, keys as the file spells them."""
    found = []
    for item in error.errors():
        loc, kind = tuple(item["loc"]), item["type"]
        if kind == "missing" and loc and isinstance(loc[-1], int):  # a value missing from a fixed-length list
            loc, kind = loc[:-1], "too_short"
        key = _key(loc)
        if kind == "value_error":
            cause = item["ctx"]["error"]
            lines = cause.found if isinstance(cause, Problems) else [str(cause)]
            found += [f"{key}.{line}" if key and isinstance(cause, Problems) else f"{key}: {line}" if key else line for line in lines]
        elif kind in ("unexpected_keyword_argument", "extra_forbidden"):
            found.append(f"{key}: unknown setting")
        elif kind == "missing":
            found.append(f"{key}: is required")
        elif kind == "union_tag_invalid":
            allowed = item["ctx"]["expected_tags"].replace("'", "")
            found.append(f"{key}.protocol: {item['ctx']['tag']!r} is not one of {allowed}")
        elif kind in ("enum", "literal_error"):
            allowed = item["ctx"]["expected"].replace("'", "").replace(" or ", ", ")
            found.append(f"{key}: {item['input']!r} is not one of {allowed}")
        else:
            found.append(f"{key}: {_EXPECTED.get(kind, item['msg'])}, got {item['input']!r}")
    return found


def load_config(path: Path) -> NodeConfig:
    """Read and check a YAML configuration; relative paths in it are taken from its folder. A key left empty takes
    its default.

    Raises ValueError naming the file and each setting that is wrong.
    """
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {data!r}")
    if "base_dir" in data:
        raise ValueError(f"{path}: base_dir: unknown setting (relative paths are taken from the file's folder)")
    try:
        return _NODE.validate_json(json.dumps({**_without_empty(data), "base_dir": str(path.resolve().parent)}, default=str), strict=True)
    except ValidationError as exc:
        raise ValueError(f"{path}: " + "; ".join(messages(exc))) from None


def _without_empty(data: Any) -> Any:
    """YAML data without the keys left empty, at every level."""
    if isinstance(data, dict):
        return {k: _without_empty(v) for k, v in data.items() if v is not None}
    if isinstance(data, list):
        return [_without_empty(v) for v in data]
    return data
