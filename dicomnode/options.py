"""The values a setting may take (Enums), apart from the settings' models in ``config.py`` so that every layer can
name them."""

from __future__ import annotations

import enum


class Orientation(str, enum.Enum):
    """Which way the axes of a model's arrays point, in (slice, row, column) order."""

    RAS = "RAS"  # columns to the patient's right, rows anterior, slices superior (nibabel canonical; TotalSegmentator)
    LPS = "LPS"  # columns to the patient's left, rows posterior, slices superior (DICOM patient axes; this project)


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


class ParenchymaSource(str, enum.Enum):
    """Which model segments the renal parenchyma."""

    PROJECT = "project"  # the project's model (model.name): parenchyma and cortex
    EXTERNAL = "external"  # an nnU-Net v2 results folder from elsewhere (model.external), e.g. TotalSegmentator's


class Runtime(str, enum.Enum):
    """What runs the network's tiles."""

    AUTO = "auto"  # ONNX Runtime on the CPU, torch on CUDA
    TORCH = "torch"  # as nnU-Net loads it
    ONNXRUNTIME = "onnxruntime"  # the same weights exported to ONNX at load (CPU only): faster on the CPU (benchmarks/inference.py)


class CortexMethod(str, enum.Enum):
    """How cortex and medulla are told apart inside an external model's parenchyma."""

    MODEL = "model"  # the project's model (model.name), run around each kidney; its cortex kept inside the parenchyma
    INTENSITY = "intensity"  # Otsu's threshold between cortex and medulla enhancement, per kidney (arterial phase)


class OnFail(str, enum.Enum):
    """What the node does with a study that fails QC."""

    WITHHOLD = "withhold"  # send no volumes; the job says why (and the text SR, where configured)
    FLAG = "flag"  # send SEG and SR with the findings inside and "QC: review" in the series descriptions
