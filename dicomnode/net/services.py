"""The service classes the node provides on an association (PS3.4): Verification, Storage, and Storage Commitment
Push Model (as SCP for peers' requests, and as SCU taking reports on results it sent). What is stored and why is
decided by :class:`Services` (the intake), what is committed by :class:`CommitmentServices`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from dicomnode.net.dimse import (
    REQUEST_STORAGE_COMMITMENT,
    STORAGE_COMMITMENT,
    STORAGE_COMMITMENT_INSTANCE,
    CommandField,
    Request,
    StoreStatus,
    event_report,
    response,
)
from dicomnode.net.incoming import Incoming
from dicomnode.net.upper_layer import ProtocolError, p_data, p_data_fragments

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Received:
    """A data set that arrived in full, written after its File Meta Information to ``path``, which is being fsynced:
    ``durable`` completes when it is on disk (or raises OSError), so that checks can run meanwhile. ``size`` counts
    the data set's bytes, of which none past the policy's ``max_data_set_bytes`` were written; ``error`` says why
    the data set could not be written whole, if it could not."""

    association: int
    calling_ae: str
    sop_class_uid: str
    sop_instance_uid: str
    path: Path
    size: int
    durable: futures.Future[None]
    error: str = ""


@dataclass(frozen=True)
class CommitmentReport:
    """The answer to a storage commitment request: its event type (1: all committed; 2: failures exist) and
    N-EVENT-REPORT data set (``encoded`` in the request's transfer syntax), for the requesting AE."""

    calling_ae: str
    transaction_uid: str
    event_type: int
    encoded: bytes
    transfer_syntax: str
    message_id: int = 1


class Services(Protocol):
    """What the acceptor asks of the receive stage."""

    def receive(self, received: Received) -> tuple[int, str]:
        """Status of the C-STORE-RSP, and its Error Comment (empty for none)."""

    def refused(self, calling_ae: str, address: str, reason: str) -> None:
        """An association is refused for ``reason``; A-ASSOCIATE-RJ is sent once this returns."""

    def closed(self, association: int, released: bool) -> None:
        """An accepted association ended: released by its peer, or not (aborted, cut off, timed out)."""


class Unavailable(Exception):
    """A service cannot answer now (its database is down): the peer is told to ask again later."""


class CommitmentServices(Protocol):
    """What the acceptor asks of Storage Commitment, as SCP for peers' requests and as SCU receiving reports."""

    def commit(self, calling_ae: str, data_set: bytes, transfer_syntax: str) -> CommitmentReport | None:
        """Which instances of a storage commitment request are committed; None where the request is malformed.
        Raises :class:`Unavailable` where it cannot be answered now."""

    def report_later(self, report: CommitmentReport) -> None:
        """Send a commitment report that its request's association could not take, on a new association."""

    def commitment_reported(self, calling_ae: str, event_type: int, data_set: bytes, transfer_syntax: str) -> bool:
        """A destination reports on results the node asked it to commit; False where the report cannot be read."""


class ServiceProvider:
    """The services on one association (numbered ``number``): each DIMSE request answered on its presentation context
    through ``send``; ``contexts`` and ``transfer`` give each accepted context's abstract and transfer syntax."""

    def __init__(
        self,
        number: int,
        send: Callable[[bytes], None],
        contexts: dict[int, str],
        transfer: dict[int, str],
        peer_maximum_length: int,
        services: Services,
        commitments: CommitmentServices,
        fsyncs: futures.Executor,
    ) -> None:
        self.number, self.send, self.contexts, self.transfer = number, send, contexts, transfer
        self.peer_maximum_length, self.services, self.commitments, self.fsyncs = peer_maximum_length, services, commitments, fsyncs
        self.report: CommitmentReport | None = None  # sent on this association, not acknowledged yet

    def without_data_set(self, request: Request, context: int) -> None:
        """A C-ECHO-RQ (Verification), or the peer's N-EVENT-REPORT-RSP to the commitment report sent to it."""
        if request.command is CommandField.N_EVENT_REPORT_RSP and self.report is not None and request.message_id == self.report.message_id:
            log.info("association %d: storage commitment report %s acknowledged (status 0x%04X)", self.number, self.report.transaction_uid, request.status)
            self.report = None
            return
        if request.command is not CommandField.C_ECHO_RQ:
            raise ProtocolError(f"{request.command.name} without a data set")
        self.send(p_data(context, response(request, StoreStatus.SUCCESS)))

    def _on_commitment_context(self, request: Request, context: int) -> bool:
        """Whether an N-ACTION or N-EVENT-REPORT is for Storage Commitment on its context; answered 0x0122 if not."""
        if self.contexts[context] == STORAGE_COMMITMENT and request.sop_class_uid == STORAGE_COMMITMENT:
            return True
        comment = f"{request.command.name.split('_RQ')[0].replace('_', '-')} for another SOP class"
        self.send(p_data(context, response(request, StoreStatus.SOP_CLASS_NOT_SUPPORTED, comment)))
        return False

    def reported(self, request: Request, context: int, calling_ae: str, data: bytes) -> None:
        """An N-EVENT-REPORT-RQ: a destination's storage commitment report on results the node sent it."""
        if not self._on_commitment_context(request, context):
            return
        understood = self.commitments.commitment_reported(calling_ae, request.action_type, data, self.transfer[context])
        status = StoreStatus.SUCCESS if understood else StoreStatus.PROCESSING_FAILURE
        self.send(p_data(context, response(request, status, "" if understood else "report not understood")))

    def commit(self, request: Request, context: int, calling_ae: str, data: bytes) -> None:
        """An N-ACTION-RQ of the Storage Commitment Push Model: answered, then its report sent on this association
        (a new one follows where this one ends before the peer acknowledges it: :attr:`report`)."""
        if not self._on_commitment_context(request, context):
            return
        if request.sop_instance_uid != STORAGE_COMMITMENT_INSTANCE:
            self.send(p_data(context, response(request, StoreStatus.NO_SUCH_SOP_INSTANCE, "not the well-known Storage Commitment instance")))
            return
        if request.action_type != REQUEST_STORAGE_COMMITMENT:
            self.send(p_data(context, response(request, StoreStatus.NO_SUCH_ACTION, f"action type {request.action_type}")))
            return
        try:
            report = self.commitments.commit(calling_ae, data, self.transfer[context])
        except Unavailable as exc:
            self.send(p_data(context, response(request, StoreStatus.RESOURCE_LIMITATION, str(exc))))
            return
        if report is None:
            self.send(p_data(context, response(request, StoreStatus.PROCESSING_FAILURE, "no Transaction UID or Referenced SOP Sequence")))
            return
        self.send(p_data(context, response(request, StoreStatus.SUCCESS)))
        self.report = replace(report, message_id=request.message_id + 1 & 0xFFFF)
        self.send(p_data(context, event_report(self.report.message_id, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, report.event_type)))
        for pdu in p_data_fragments(context, report.encoded, self.peer_maximum_length):
            self.send(pdu)

    def store(self, request: Request, context: int, calling_ae: str, incoming: Incoming) -> None:
        """A C-STORE-RQ whose data set ``incoming`` holds: fsynced while the intake checks it, then answered."""
        if request.command is not CommandField.C_STORE_RQ:
            incoming.discard()
            raise ProtocolError(f"{request.command.name} with a data set")
        if self.contexts[context] != request.sop_class_uid:
            incoming.discard()
            status: int = StoreStatus.SOP_CLASS_NOT_SUPPORTED
            comment = f"SOP class {request.sop_class_uid} sent on a context for {self.contexts[context]}"
        else:
            try:
                durable = self.fsyncs.submit(incoming.finish)
            except RuntimeError:  # the acceptor is stopping
                incoming.discard()
                raise ConnectionError("the node is stopping") from None
            try:
                sop_class, sop_instance = request.sop_class_uid, request.sop_instance_uid
                received = Received(self.number, calling_ae, sop_class, sop_instance, incoming.path, incoming.size, durable, incoming.error)
                status, comment = self.services.receive(received)
            finally:
                incoming.path.unlink(missing_ok=True)  # stored files were moved away; refused ones go, their fsync unawaited
        self.send(p_data(context, response(request, status, comment)))
