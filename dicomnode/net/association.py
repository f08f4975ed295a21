"""Association control (PS3.8 7.1, the ACSE service): whether an A-ASSOCIATE-RQ is accepted, and which transfer
syntax each proposed presentation context gets."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    UncompressedTransferSyntaxes,
)

from dicomnode import __version__
from dicomnode.net.upper_layer import DICOM_APPLICATION_CONTEXT, AssociateRequest, ContextAnswer, ContextResult, Rejection, context_problem

#: Transfer syntaxes that keep every pixel value (PS3.5 Annex A): the uncompressed, deflated and lossless ones. A
#: context gets the first of these its proposer offers, and a lossy one only where it offers no other (finding 8 of
#: the second adversarial run: JPEG Baseline proposed first beside lossless syntaxes was accepted).
LOSSLESS_SYNTAXES = frozenset(
    {
        *UncompressedTransferSyntaxes,
        DeflatedExplicitVRLittleEndian,
        JPEGLossless,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEG2000Lossless,
        JPEG2000MCLossless,
        HTJ2KLossless,
        HTJ2KLosslessRPCL,
        RLELossless,
    }
)

#: (0002,0013) Implementation Version Name, at most 16 characters.
IMPLEMENTATION_VERSION = f"DICOMNODE_{__version__}"[:16]


@dataclass(frozen=True)
class Policy:
    """Who may associate and what they may send. ``contexts`` maps each accepted abstract syntax to the transfer
    syntaxes accepted for it, in no order: each context gets the first of its proposed transfer syntaxes that is
    accepted and lossless, else the first accepted. A socket silent for ``timeout_s`` is closed; so is one whose
    A-ASSOCIATE-RQ is not in within ``timeout_s`` of connecting, whose other PDUs each take longer than that, or whose
    message (a command and its data set) takes longer than ``instance_timeout_s``, however slowly it trickles in."""

    ae_title: str
    contexts: Mapping[str, tuple[str, ...]]
    check_called_ae: bool = True
    allowed_callers: tuple[str, ...] = ()
    allowed_addresses: tuple[str, ...] = ()
    max_associations: int = 20
    max_data_set_bytes: int = 2**40
    timeout_s: float = 60.0
    instance_timeout_s: float = 600.0
    incoming: Path = Path(".")
    ssl_context: ssl.SSLContext | None = None


def refusal(request: AssociateRequest, policy: Policy) -> tuple[Rejection, str] | None:
    """Why ``request`` is refused under ``policy`` (the reject reason and a sentence), or None where it may be
    accepted; the limit on associations at once is the acceptor's to check."""
    if not request.protocol_version & 1:
        return Rejection.PROTOCOL_VERSION_NOT_SUPPORTED, f"protocol version 0x{request.protocol_version:04x} not supported"
    if request.application_context != DICOM_APPLICATION_CONTEXT:
        return Rejection.APPLICATION_CONTEXT_NOT_SUPPORTED, f"application context {request.application_context!r} is not DICOM's"
    problem = context_problem(request.contexts)
    if problem:
        return Rejection.NO_REASON_GIVEN, problem
    if policy.allowed_callers and request.calling_ae not in policy.allowed_callers:
        return Rejection.CALLING_AE_NOT_RECOGNISED, "calling AE title not in allowed_callers"
    if policy.check_called_ae and request.called_ae != policy.ae_title:
        return Rejection.CALLED_AE_NOT_RECOGNISED, f"called AE title {request.called_ae!r} is not this node's {policy.ae_title!r}"
    return None


def answer_context(policy: Policy, abstract_syntax: str, transfer_syntaxes: tuple[str, ...], context_id: int) -> ContextAnswer:
    """The answer to one proposed presentation context: the first proposed transfer syntax that ``policy`` accepts
    and is lossless, else the first it accepts."""
    accepted = policy.contexts.get(abstract_syntax, ())
    if not accepted:
        return ContextAnswer(context_id, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED, transfer_syntaxes[0])
    usable = [ts for ts in transfer_syntaxes if ts in accepted]
    chosen = next((ts for ts in usable if ts in LOSSLESS_SYNTAXES), usable[0] if usable else None)
    if chosen is None:
        return ContextAnswer(context_id, ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED, transfer_syntaxes[0])
    return ContextAnswer(context_id, ContextResult.ACCEPTANCE, chosen)
