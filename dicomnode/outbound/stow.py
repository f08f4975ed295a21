"""DICOMweb STOW-RS (PS3.18 10.5): result files POSTed as one multipart/related request to ``{url}/studies``."""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path

from dicomnode.base.tls import https_context
from dicomnode.config import Destination, NodeConfig, StowRsDestination
from dicomnode.options import Auth
from dicomnode.outbound.outgoing import Committing, Outgoing, SendOutcome

#: PS3.18 Table 10.5.3-1 and PS3.3: tags of the STOW-RS response.
FAILED_SOP_SEQUENCE, REFERENCED_SOP_SEQUENCE = "00081198", "00081199"
REFERENCED_SOP_INSTANCE_UID, FAILURE_REASON = "00081155", "00081197"


def authorization(destination: StowRsDestination) -> str | None:
    """The Authorization header for ``destination``, from the environment variable it names."""
    if destination.auth is Auth.NONE:
        return None
    secret = os.environ.get(destination.credentials_env, "")
    if not secret:
        raise ValueError(f"destination {destination.name!r}: {destination.credentials_env} (its credentials_env) is not set")
    if destination.auth is Auth.BASIC:
        return "Basic " + base64.b64encode(secret.encode()).decode()
    return f"Bearer {secret}"


def multipart(files: list[Path], boundary: str) -> bytes:
    """The request body: each file as an application/dicom part."""
    parts = [b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + path.read_bytes() + b"\r\n" for path in files]
    return b"".join(parts) + b"--" + boundary.encode() + b"--\r\n"


def send(
    config: NodeConfig, destination: Destination, datasets: Sequence[Outgoing], committing: Committing | None = None
) -> tuple[list[SendOutcome], str | None]:
    """POST the result files in one request; one outcome per file, from the response's Failed and Referenced SOP
    Sequences (STOW-RS has no storage commitment: no Transaction UID)."""
    if not isinstance(destination, StowRsDestination):
        raise TypeError(f"destination: {destination.name} is not a STOW-RS destination")
    return _post(config, destination, [d.path for d in datasets], [d.sop_instance for d in datasets]), None


def _post(config: NodeConfig, destination: StowRsDestination, files: list[Path], sop_uids: list[str]) -> list[SendOutcome]:
    boundary = f"dicomnode-{uuid.uuid4().hex}"
    request = urllib.request.Request(
        destination.url.rstrip("/") + "/studies",
        data=multipart(files, boundary),
        method="POST",
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}', "Accept": "application/dicom+json"},
    )
    header = authorization(destination)
    if header:
        request.add_header("Authorization", header)
    context = https_context(config) if destination.url.startswith("https://") else None
    try:
        with urllib.request.urlopen(request, timeout=config.delivery.timeout_s, context=context) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
        if status != 409 and status != 202:  # 409 and 202 carry per-instance failures in the body
            return [SendOutcome(False, f"HTTP {status} {error.reason}")] * len(files)
    except (urllib.error.URLError, OSError) as error:
        return [SendOutcome(False, f"no connection ({getattr(error, 'reason', error)})")] * len(files)
    return _per_file(status, body, sop_uids)


def _per_file(status: int, body: bytes, sop_uids: list[str]) -> list[SendOutcome]:
    try:
        response = json.loads(body) if body.strip() else {}
    except ValueError:
        response = {}
    if isinstance(response, list):  # some servers answer with a one-element array
        response = response[0] if response else {}
    failed = {
        str(item.get(REFERENCED_SOP_INSTANCE_UID, {}).get("Value", [""])[0]): item.get(FAILURE_REASON, {}).get("Value", [0])[0]
        for item in response.get(FAILED_SOP_SEQUENCE, {}).get("Value", [])
    }
    stored = {str(item.get(REFERENCED_SOP_INSTANCE_UID, {}).get("Value", [""])[0]) for item in response.get(REFERENCED_SOP_SEQUENCE, {}).get("Value", [])}
    outcomes = []
    for uid in sop_uids:
        if uid in failed:
            outcomes.append(SendOutcome(False, f"HTTP {status}: failure reason 0x{int(failed[uid]):04X}"))
        elif uid in stored or (status == 200 and not failed):
            outcomes.append(SendOutcome(True, f"HTTP {status}"))
        else:
            outcomes.append(SendOutcome(False, f"HTTP {status}: not acknowledged in the response"))
    return outcomes
