"""Node configuration: typed dataclasses read from YAML (``config.yaml`` is the embedded default)."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from dicomnode.conventions import Orientation
from dicomnode.priors import KIDNEY_ANTEROPOSTERIOR_MM, KIDNEY_HU, KIDNEY_LATERAL_MM, KIDNEY_ML


@dataclass(frozen=True)
class TLSConfig:
    """Optional DICOM TLS; both receive and send use it where ``enabled``."""

    enabled: bool = False
    certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""  # peers must present a certificate signed by these


class Protocol(str, enum.Enum):
    """How results reach a destination."""

    DIMSE = "dimse"  # C-STORE to an AE title, host and port
    STOW_RS = "stow-rs"  # DICOMweb STOW-RS: HTTP POST to {url}/studies


class Auth(str, enum.Enum):
    """HTTP authentication of a STOW-RS destination; the secret comes from the environment, never the file."""

    NONE = "none"
    BASIC = "basic"  # credentials_env holds "user:password"
    BEARER = "bearer"  # credentials_env holds the token


class Role(str, enum.Enum):
    """What a ``serve`` process does; ``all`` is the embedded node, the others split it over a cluster."""

    ALL = "all"
    RECEIVER = "receiver"  # C-STORE SCP and completion (one completer at a time, over every receiver's associations)
    WORKER = "worker"  # claims jobs under a lease and processes them with the warm model
    SENDER = "sender"  # delivers results and runs retention


class OutputFormat(str, enum.Enum):
    """What a destination receives of a result."""

    SEG = "seg"  # DICOM-SEG: cortex, medulla and parenchyma per side
    SR = "sr"  # TID 1500 SR with the volumes (or the text SR of a study without result)
    SC = "sc"  # Secondary Capture pictures: key slices with outlines and a page of volumes, for PACS without SEG


@dataclass(frozen=True)
class Destination:
    """A peer that results are sent to: a DICOM AE by C-STORE, or a DICOMweb service by STOW-RS."""

    name: str
    ae_title: str = ""  # dimse
    host: str = ""  # dimse
    port: int = 0  # dimse
    tls: bool = False  # dimse: DICOM TLS with the node's tls settings
    protocol: Protocol = Protocol.DIMSE
    url: str = ""  # stow-rs: the service root, e.g. https://pacs.example.org/dicom-web
    auth: Auth = Auth.NONE  # stow-rs
    credentials_env: str = ""  # stow-rs: the environment variable holding the credentials for ``auth``
    formats: tuple[OutputFormat, ...] = (OutputFormat.SEG, OutputFormat.SR)
    storage_commitment: bool = False  # dimse: a result is delivered only when the destination reports it committed

    def __post_init__(self) -> None:
        for name, kind in (("protocol", Protocol), ("auth", Auth)):
            try:
                object.__setattr__(self, name, kind(getattr(self, name)))
            except ValueError:
                allowed = ", ".join(m.value for m in kind)
                raise ValueError(f"destinations[{self.name}].{name}: {getattr(self, name)!r} is not one of {allowed}") from None
        try:
            object.__setattr__(self, "formats", tuple(OutputFormat(f) for f in self.formats))
        except ValueError:
            allowed = ", ".join(m.value for m in OutputFormat)
            raise ValueError(f"destinations[{self.name}].formats: {list(self.formats)} holds a format that is not one of {allowed}") from None


@dataclass(frozen=True)
class Peer:
    """A DICOM AE the node opens associations to: here, where a Storage Commitment requester takes its report."""

    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class Delivery:
    """Retry policy for sending results."""

    max_attempts: int = 8
    backoff_s: float = 5.0
    max_backoff_s: float = 600.0
    timeout_s: float = 30.0
    commitment_timeout_s: float = 300.0  # a destination with storage_commitment that has not reported by then: sent again


class ParenchymaSource(str, enum.Enum):
    """Which model segments the renal parenchyma."""

    PROJECT = "project"  # the project's model (model.name): parenchyma and cortex
    EXTERNAL = "external"  # an nnU-Net v2 results folder from elsewhere (model.external), e.g. TotalSegmentator's


class Runtime(str, enum.Enum):
    """What runs the network's tiles."""

    AUTO = "auto"  # ONNX Runtime on the CPU, torch on CUDA
    TORCH = "torch"  # as nnU-Net loads it
    ONNXRUNTIME = "onnxruntime"  # the same weights exported to ONNX at load (CPU only): about 8x faster on 2 cores


class CortexMethod(str, enum.Enum):
    """How cortex and medulla are told apart inside an external model's parenchyma."""

    MODEL = "model"  # the project's model (model.name), run around each kidney; its cortex kept inside the parenchyma
    INTENSITY = "intensity"  # Otsu's threshold between cortex and medulla enhancement, per kidney (arterial phase)


@dataclass(frozen=True)
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
    spacing_mm: float = 1.5  # isotropic resampling before prediction (TotalSegmentator: 1.5 total, 3.0 --fast); 0: none
    tile_step_size: float = 0.8  # TotalSegmentator's for its total models
    licence: str = "Apache-2.0 (TotalSegmentator's total task weights)"


@dataclass(frozen=True)
class ModelConfig:
    """Which model segments and how."""

    folder: str = "models"
    name: str = "renal-synth3-cpu"
    device: str = "auto"  # auto (cuda if present), cuda or cpu
    mirroring: bool = False  # test-time mirroring: better, 8x slower
    tile_step_size: float = 0.5
    cascade: bool = True  # without a localizer: a coarse pass without tile overlap, then the usual pass around its largest components (docs/pipeline.md)
    localizer: str = (
        "auto"  # a model in ``folder`` that finds the kidneys, the model then runs only around them: auto (the one the model's card names), none, or a name
    )
    runtime: Runtime = Runtime.AUTO
    parenchyma: ParenchymaSource = ParenchymaSource.PROJECT
    cortex: CortexMethod = CortexMethod.MODEL  # inside an external model's parenchyma (see docs/external-models.md for the figures)
    external: ExternalModelConfig = field(default_factory=ExternalModelConfig)


@dataclass(frozen=True)
class Selection:
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
    arterial_window_s: tuple[float, float] = (15.0, 50.0)
    min_slices: int = 20
    preferred_slice_mm: float = 5.0  # between thin and thick reconstructions of one phase (the paper's model: 5 mm)
    parenchyma_fallback: bool = True  # no arterial series: the best other CT series gives parenchyma volumes only; false: no result


class OnFail(str, enum.Enum):
    """What the node does with a study that fails QC."""

    WITHHOLD = "withhold"  # send no volumes; the job says why (and the text SR, where configured)
    FLAG = "flag"  # send SEG and SR with the findings inside and "QC: review" in the series descriptions


@dataclass(frozen=True)
class QCConfig:
    """Plausibility limits of the QC gate (see ``dicomnode/analysis/qc.py``); each (low, high) pair is inclusive.

    Volume and length limits come from the 416 hand-drawn kidneys of KiTS19 (``dicomnode-train priors``, figures in
    ``training/kits19_priors.json``):
    tumour excluded 43-430 ml; longest side up to 221 mm with tumour, 175 mm at the 99th percentile.
    """

    on_fail: OnFail = OnFail.WITHHOLD
    kidney_ml: tuple[float, float] = KIDNEY_ML  # parenchyma per kidney
    max_extent_mm: float = 200.0  # longest side of a kidney's bounding box
    max_stray_ml: float = 20.0  # predicted kidney outside the two kidneys kept
    kidney_hu: tuple[float, float] = KIDNEY_HU  # mean attenuation of the parenchyma
    cortex_share: tuple[float, float] = (0.2, 0.9)  # cortex / parenchyma
    min_corticomedullary_hu: float = 15.0  # cortex minus medulla, checked unless the image shows another phase
    max_outline_medulla_share: float = 0.08  # outer surface labelled medulla, checked in the arterial phase; more: it takes in a neighbour
    max_denser_share: float = 0.02  # share of a kidney 20 HU denser than its median, checked without contrast; more: it takes in a neighbour
    lateral_mm: tuple[float, float] = KIDNEY_LATERAL_MM  # kidney centre to the side of the spine's centre
    anteroposterior_mm: tuple[float, float] = KIDNEY_ANTEROPOSTERIOR_MM  # kidney centre from the spine's centre (+: behind)
    min_spine_share: float = 0.3  # share of a kidney's slices on which the vertebral column must be found
    max_height_difference_mm: float = 100.0  # between the two kidneys' centres
    max_cut_share: float = 0.3  # a kidney whose face on an image edge is at most this share of its largest cross-section: a lower bound; more: withheld
    per_structure: bool = True  # parenchyma sent when its own checks pass, cortex and medulla only when theirs pass too; false: all or nothing
    require_arterial_image: bool = True  # cortex and medulla only where the image check finds the arterial phase; false: also where it finds none

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "on_fail", OnFail(self.on_fail))
        except ValueError:
            raise ValueError(f"qc.on_fail: {self.on_fail!r} is not one of {', '.join(m.value for m in OnFail)}") from None
        for name in ("kidney_ml", "kidney_hu", "cortex_share", "lateral_mm", "anteroposterior_mm"):
            pair = getattr(self, name)
            if len(pair) != 2 or not pair[0] < pair[1]:
                raise ValueError(f"qc.{name}: expected [low, high] with low < high, got {list(pair)}")


@dataclass(frozen=True)
class Retention:
    """When received instances and results are deleted (see ``dicomnode/retention.py``): never before every
    destination confirmed a study's results; a job not done or a delivery queued or parked keeps the study."""

    days: float = 30.0  # after a finished study's last activity; 0 keeps studies until disk pressure
    free_disk_mb: int = 2048  # below this much free space the least recently active finished studies go first
    interval_s: float = 300.0  # how often the cleaner runs


@dataclass(frozen=True)
class HistoryConfig:
    """The measurement history (see ``dicomnode/store/history.py``): each patient's results, kept after retention
    deletes the images, deleted only by ``dicomnode purge-patient``."""

    enabled: bool = True  # record each result and compare it with the patient's earlier ones; false: neither
    pseudonym_key_env: str = "DICOMNODE_PSEUDONYM_KEY"  # the environment variable with the key of ``dicomnode export --pseudonymise``


@dataclass(frozen=True)
class WebConfig:
    """The read-only status page, ``/healthz`` and ``/metrics`` (see ``dicomnode/web.py``)."""

    enabled: bool = True
    host: str = "127.0.0.1"  # loopback: the page lists study UIDs and verdicts; put a proxy with authentication in front to share it
    port: int = 8089


@dataclass(frozen=True)
class ClusterConfig:
    """Several processes on one PostgreSQL database (``database: postgresql://...``) and one shared ``storage``."""

    name: str = ""  # this machine's name among the cluster's receivers and workers (default: its host name)
    lease_s: float = 60.0  # a worker's hold on its job, renewed every lease_s / 4; a job whose lease runs out goes to another worker
    receiver_timeout_s: float = 30.0  # a receiver silent this long: its open associations no longer hold studies back


@dataclass(frozen=True)
class NodeConfig:
    """Everything ``dicomnode serve`` needs."""

    ae_title: str = "RENALNODE"
    host: str = "127.0.0.1"
    port: int = 11112
    storage: str = "var/storage"
    database: str = "var/dicomnode.sqlite"
    results: str = "var/results"
    quiet_period_s: float = 10.0
    max_wait_s: float = 120.0  # a study whose association stays open is processed this long after its last instance
    tick_s: float = 1.0
    allowed_callers: tuple[str, ...] = ()  # calling AE titles; empty: any
    allowed_addresses: tuple[str, ...] = ()  # peer IP addresses; empty: any
    check_called_ae: bool = True  # refuse associations whose called AE title is not ``ae_title``
    max_associations: int = 20  # associations served at once; more are refused (local limit exceeded) and logged
    min_free_disk_mb: int = 500
    max_instance_mb: int = 2048  # larger instances are refused with 0xA700 after they arrived (on disk, not in memory)
    network_timeout_s: float = 60.0  # an association silent this long is closed; its unfinished instance is discarded
    instance_timeout_s: float = 600.0  # a C-STORE (command and data set) must arrive within this, however it trickles in
    log_patient_data: bool = False
    send_text_sr_without_result: bool = False
    tls: TLSConfig = field(default_factory=TLSConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    selection: Selection = field(default_factory=Selection)
    qc: QCConfig = field(default_factory=QCConfig)
    delivery: Delivery = field(default_factory=Delivery)
    retention: Retention = field(default_factory=Retention)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    web: WebConfig = field(default_factory=WebConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    destinations: tuple[Destination, ...] = ()
    commitment_peers: tuple[Peer, ...] = ()  # where Storage Commitment requesters that are not destinations take their reports
    base_dir: Path = Path(".")

    def wants(self, output: OutputFormat) -> bool:
        """Whether any destination receives ``output``."""
        return any(output in d.formats for d in self.destinations)

    def path(self, value: str) -> Path:
        """A configured path, relative to the configuration file's folder."""
        return Path(value) if Path(value).is_absolute() else self.base_dir / value


#: Settings that are lists of settings, and the class of each entry.
_LISTS: dict[str, type] = {"destinations": Destination, "commitment_peers": Peer}


def _build(cls: type, data: Any, prefix: str = "") -> Any:
    """An instance of the settings dataclass ``cls`` from YAML data, each value checked against its field's type."""
    if not isinstance(data, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'the file'}: expected a mapping of settings, got {data!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings: {', '.join(prefix + k for k in sorted(unknown))}")
    values = {}
    for name, value in data.items():
        hint, key = hints[name], prefix + name
        if isinstance(hint, type) and is_dataclass(hint):
            values[name] = _build(hint, value or {}, key + ".")
        elif name in _LISTS:
            values[name] = tuple(_build(_LISTS[name], d, f"{key}[{n}].") for n, d in enumerate(value or ()))
        else:
            values[name] = _typed(value, hint, key)
    return cls(**values)


def _typed(value: Any, hint: Any, key: str) -> Any:
    """``value`` as the type ``hint`` names (int, float, bool, str, an Enum, or a tuple of these); ValueError naming
    ``key`` where it is not one."""
    if get_origin(hint) is tuple:
        args = get_args(hint)
        if not isinstance(value, (list, tuple)) or (args[-1] is not Ellipsis and len(value) != len(args)):
            size = "a list" if args[-1] is Ellipsis else f"a list of {len(args)}"
            raise ValueError(f"{key}: expected {size}, got {value!r}")
        kinds = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        return tuple(_typed(v, kind, f"{key}[{n}]") for n, (v, kind) in enumerate(zip(value, kinds)))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            raise ValueError(f"{key}: {value!r} is not one of {', '.join(str(m.value) for m in hint)}") from None
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, bool, str) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ValueError(f"{key}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


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


def problems(config: NodeConfig) -> list[str]:
    """What is wrong with a configuration, one line per setting (empty when it is usable)."""
    found = []

    def check(ok: bool, key: str, why: str) -> None:
        if not ok:
            found.append(f"{key}: {why}")

    ok, why = valid_ae_title(config.ae_title)
    check(ok, "ae_title", f"{config.ae_title!r} {why}")
    check(1 <= config.port <= 65535, "port", f"{config.port} is not 1-65535")
    check(1 <= config.web.port <= 65535, "web.port", f"{config.web.port} is not 1-65535")
    check(not config.web.enabled or config.web.port != config.port or config.web.host != config.host, "web.port", "is the DICOM port")
    check(config.quiet_period_s >= 0, "quiet_period_s", "must not be negative")
    check(config.max_wait_s >= config.quiet_period_s, "max_wait_s", f"{config.max_wait_s:g} is shorter than quiet_period_s")
    check(config.tick_s > 0, "tick_s", "must be positive")
    check(config.max_associations >= 1, "max_associations", "must be at least 1")
    check(config.network_timeout_s > 0, "network_timeout_s", "must be more than 0")
    check(config.instance_timeout_s >= config.network_timeout_s, "instance_timeout_s", "must be at least network_timeout_s")
    check(config.max_instance_mb >= 1, "max_instance_mb", "must be at least 1")
    check(config.retention.days >= 0, "retention.days", "must not be negative")
    check(config.retention.interval_s > 0, "retention.interval_s", "must be positive")
    check(config.cluster.lease_s >= 4 * config.tick_s, "cluster.lease_s", f"{config.cluster.lease_s:g} is shorter than 4 ticks")
    check(config.cluster.receiver_timeout_s >= 3 * config.tick_s, "cluster.receiver_timeout_s", "is shorter than 3 ticks")
    check(
        config.retention.free_disk_mb > config.min_free_disk_mb,
        "retention.free_disk_mb",
        f"{config.retention.free_disk_mb} must be above min_free_disk_mb={config.min_free_disk_mb}, so that studies are deleted before C-STORE is refused",
    )
    check(config.model.device in ("auto", "cpu", "cuda"), "model.device", f"{config.model.device!r} is not auto, cpu or cuda")
    onnx_on_cuda = config.model.runtime is Runtime.ONNXRUNTIME and config.model.device == "cuda"
    check(not onnx_on_cuda, "model.runtime", "onnxruntime runs on the CPU only; the device is cuda")
    if config.model.parenchyma is ParenchymaSource.EXTERNAL:
        external = config.model.external
        check(bool(external.folder), "model.external.folder", "names no folder (an nnU-Net v2 results folder is needed)")
        check(external.spacing_mm >= 0, "model.external.spacing_mm", "must not be negative")
        check(0 < external.tile_step_size <= 1, "model.external.tile_step_size", "must be in (0, 1]")
        check(external.right_label != external.left_label, "model.external.left_label", "is the right_label")
        folder = config.path(external.folder)
        for name in ("dataset.json", "plans.json", f"fold_{external.fold}/{external.checkpoint}"):
            check(not external.folder or (folder / name).is_file(), "model.external.folder", f"{folder / name} not found")
    names = [d.name for d in config.destinations]
    for name in sorted({n for n in names if names.count(n) > 1}):
        found.append(f"destinations: the name {name!r} is used {names.count(name)} times")
    for d in config.destinations:
        key = f"destinations[{d.name}]"
        if d.protocol is Protocol.STOW_RS:
            check(d.url.startswith(("http://", "https://")), f"{key}.url", f"{d.url!r} is not an http(s) URL")
            check(d.auth is Auth.NONE or bool(d.credentials_env), f"{key}.credentials_env", f"names no environment variable for {d.auth.value} auth")
            check(d.auth is Auth.NONE or not d.credentials_env or d.credentials_env in os.environ, f"{key}.credentials_env", f"{d.credentials_env} is not set")
            continue
        ok, why = valid_ae_title(d.ae_title)
        check(ok, f"{key}.ae_title", f"{d.ae_title!r} {why}")
        check(1 <= d.port <= 65535, f"{key}.port", f"{d.port} is not 1-65535")
        check(not d.tls or config.tls.certificate != "", f"{key}.tls", "needs tls.certificate and tls.private_key")
    if config.tls.enabled or any(d.tls for d in config.destinations):
        for key in ("certificate", "private_key", "ca_certificates"):
            value = getattr(config.tls, key)
            check(key == "ca_certificates" and not value or bool(value) and config.path(value).is_file(), f"tls.{key}", f"file {value!r} not found")
    return found


def load_config(path: Path) -> NodeConfig:
    """Read and check a YAML configuration; relative paths in it are taken from its folder.

    Raises ValueError naming the file and each setting that is wrong.
    """
    data = yaml.safe_load(path.read_text()) or {}
    try:
        config = replace(_build(NodeConfig, data), base_dir=path.resolve().parent)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    found = problems(config)
    if found:
        raise ValueError(f"{path}: " + "; ".join(found))
    return config
