"""An association acceptor for the Verification, Storage and Storage Commitment services: one thread per association
reading from a blocking socket (no polling), each data set written to a file as its fragments arrive, the C-STORE
answered with what :class:`Services` decides and Storage Commitment with what :class:`CommitmentServices` decides.
The DICOM side of the receive stage; what is stored and why is decided in ``receive.py``, what is committed in
``delivery/commitment.py``."""

from __future__ import annotations

import itertools
import logging
import math
import os
import socket
import socketserver
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent import futures
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

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
from dicomnode.net.dimse import (
    REQUEST_STORAGE_COMMITMENT,
    STORAGE_COMMITMENT,
    STORAGE_COMMITMENT_INSTANCE,
    CommandField,
    Request,
    StoreStatus,
    event_report,
    parse_request,
    response,
)
from dicomnode.net.upper_layer import (
    DICOM_APPLICATION_CONTEXT,
    MAX_ASSOCIATE_REQUEST,
    MAX_COMMAND,
    AbortReason,
    AssociateRequest,
    ContextAnswer,
    ContextResult,
    PduReader,
    PduType,
    ProtocolError,
    Rejection,
    abort,
    associate_accept,
    associate_reject,
    context_problem,
    p_data,
    p_data_fragments,
    parse_associate_request,
    release_response,
)
from dicomnode.uids import IMPLEMENTATION_CLASS_UID

log = logging.getLogger(__name__)

#: Seconds :meth:`Acceptor.stop` waits for the associations it cut off to finish.
STOP_WAIT_S = 5.0
#: Connections open at once, negotiating or associated, per ``max_associations``; more are closed at once (a flood of
#: idle connections would otherwise hold a thread and buffers each for ``timeout_s``).
MAX_CONNECTIONS_PER_ASSOCIATION = 2

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

#: An N-ACTION data set is read into memory: a request naming 100,000 instances fits.
MAX_ACTION_BYTES = 16 * 2**20

#: (0002,0013) Implementation Version Name, at most 16 characters.
IMPLEMENTATION_VERSION = f"DICOMNODE_{__version__}"[:16]


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


def _file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, calling_ae: str) -> bytes:
    """Preamble, prefix and File Meta Information (PS3.10 7.1), explicit VR little endian."""

    def element(element: int, vr: bytes, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\0" if vr == b"UI" else b" "
        if vr == b"OB":
            return struct.pack("<HH2sHL", 2, element, vr, 0, len(value)) + value
        return struct.pack("<HH2sH", 2, element, vr, len(value)) + value

    def text(value: str) -> bytes:
        return value.encode("ascii", "replace")

    body = (
        element(0x0001, b"OB", b"\0\1")
        + element(0x0002, b"UI", text(sop_class_uid))
        + element(0x0003, b"UI", text(sop_instance_uid))
        + element(0x0010, b"UI", text(transfer_syntax))
        + element(0x0012, b"UI", text(IMPLEMENTATION_CLASS_UID))
        + element(0x0013, b"SH", text(IMPLEMENTATION_VERSION))
        + (element(0x0016, b"AE", text(calling_ae)) if calling_ae else b"")
    )
    return bytes(128) + b"DICM" + element(0x0000, b"UL", struct.pack("<L", len(body))) + body


class _Incoming:
    """One data set being written to a hidden file under ``folder`` as it arrives; bytes past ``limit`` are counted,
    not kept, and so are all bytes after a failed write (``error`` says why)."""

    def __init__(self, folder: Path, meta: bytes, limit: int) -> None:
        self.path = folder / f".{uuid.uuid4().hex}.tmp"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.size, self._limit, self.error = 0, limit, ""
        try:
            self._write(memoryview(meta))
        except OSError as exc:  # a full disk: the data set is read and refused, the file removed with it
            self.error = f"write failed: {exc}"

    def _write(self, view: memoryview) -> None:
        while view:
            view = view[os.write(self._fd, view) :]

    def write(self, data: memoryview) -> None:
        if self.size + len(data) <= self._limit and not self.error:
            try:
                self._write(data)
            except OSError as exc:  # a full disk, an I/O error: the instance will be refused
                self.error = f"write failed: {exc}"
        self.size += len(data)

    def finish(self) -> None:
        """fsync and close; once this returns without raising, the data set is on disk."""
        try:
            os.fsync(self._fd)
        finally:
            os.close(self._fd)

    def discard(self) -> None:
        os.close(self._fd)
        self.path.unlink(missing_ok=True)


class _Association:
    """One association, from the A-ASSOCIATE-RQ to its release or abort."""

    def __init__(self, acceptor: Acceptor, sock: socket.socket, address: str, number: int, opened: float) -> None:
        self.acceptor, self.sock, self.address, self.number, self.opened = acceptor, sock, address, number, opened
        self.policy = acceptor.policy
        self.reader = PduReader(sock)
        self.incoming: _Incoming | None = None
        self.admitted = False
        self.contexts: dict[int, str] = {}  # accepted context ID: abstract syntax
        self.transfer: dict[int, str] = {}  # accepted context ID: transfer syntax
        self.action = bytearray()  # an N-ACTION data set being read
        self.report: CommitmentReport | None = None  # sent on this association, not acknowledged yet
        self.peer_maximum_length = 0

    def send(self, pdu: bytes) -> None:
        self.sock.sendall(pdu)

    def negotiate(self) -> AssociateRequest | None:
        """Read the request, and accept it (returning it) or refuse it; the whole request must arrive within
        ``timeout_s`` of the connection (the ARTIM timer of PS3.8 9.1.5), not only each read."""
        self.reader.deadline, self.reader.waiting_for = self.opened + self.policy.timeout_s, "the A-ASSOCIATE-RQ"
        kind, length = self.reader.header()
        if kind is not PduType.ASSOCIATE_RQ:
            raise ProtocolError(f"{kind.name} before A-ASSOCIATE-RQ", AbortReason.UNEXPECTED_PDU)
        if length > MAX_ASSOCIATE_REQUEST:
            raise ProtocolError(f"A-ASSOCIATE-RQ of {length} bytes")
        request = parse_associate_request(self.reader.read(length))
        refusal = self.refusal(request)
        if refusal is not None:
            rejection, reason = refusal
            self.acceptor.services.refused(request.calling_ae, self.address, reason)  # recorded before the peer hears it
            self.send(associate_reject(rejection))
            return None
        answers = [self.answer(c.abstract_syntax, c.transfer_syntaxes, c.context_id) for c in request.contexts]
        roles = tuple((uid, scu, scp) for uid, scu, scp in request.roles if uid == STORAGE_COMMITMENT)  # its reports may come to the node
        self.send(associate_accept(request, answers, 0, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION, roles))
        self.contexts = {a.context_id: c.abstract_syntax for a, c in zip(answers, request.contexts, strict=True) if a.result is ContextResult.ACCEPTANCE}
        self.transfer = {a.context_id: a.transfer_syntax for a in answers}
        return request

    def refusal(self, request: AssociateRequest) -> tuple[Rejection, str] | None:
        policy = self.policy
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
        self.admitted = self.acceptor.admit(self.number)
        if not self.admitted:
            return Rejection.LOCAL_LIMIT_EXCEEDED, f"more than max_associations={policy.max_associations} associations at once"
        return None

    def answer(self, abstract_syntax: str, transfer_syntaxes: tuple[str, ...], context_id: int) -> ContextAnswer:
        accepted = self.policy.contexts.get(abstract_syntax, ())
        if not accepted:
            return ContextAnswer(context_id, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED, transfer_syntaxes[0])
        usable = [ts for ts in transfer_syntaxes if ts in accepted]
        chosen = next((ts for ts in usable if ts in LOSSLESS_SYNTAXES), usable[0] if usable else None)
        if chosen is None:
            return ContextAnswer(context_id, ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED, transfer_syntaxes[0])
        return ContextAnswer(context_id, ContextResult.ACCEPTANCE, chosen)

    def messages(self, calling_ae: str) -> str:
        """Serve DIMSE messages until the peer releases or aborts; returns which."""
        command, request, context = bytearray(), None, 0  # context: of the command being read, then of its data set
        message_due = math.inf  # the deadline of the message (command and data set) under way
        while True:
            started = time.monotonic()
            in_message = message_due < math.inf
            self.reader.deadline = message_due if in_message else started + self.policy.timeout_s
            self.reader.waiting_for = "an instance" if in_message else "a PDU"
            kind, length = self.reader.header()
            if kind is PduType.P_DATA_TF and not in_message:
                message_due = self.reader.deadline = started + self.policy.instance_timeout_s
                self.reader.waiting_for = "an instance"
            if kind in (PduType.RELEASE_RQ, PduType.ABORT):
                if length != 4:
                    raise ProtocolError(f"{kind.name} of {length} bytes, not 4")
                self.reader.read(length)
                if kind is PduType.ABORT:
                    return "aborted by the peer"
                self.send(release_response())
                return "released"
            if kind is not PduType.P_DATA_TF:
                raise ProtocolError(f"{kind.name} during the association", AbortReason.UNEXPECTED_PDU)
            remaining = length
            while remaining:
                fragment = self.reader.fragment(remaining)
                remaining -= 6 + fragment.length
                if fragment.context_id not in self.contexts:
                    raise ProtocolError(f"a PDV on presentation context {fragment.context_id}, which was not accepted")
                if fragment.command:
                    if request is not None or len(command) + fragment.length > MAX_COMMAND:
                        raise ProtocolError("a command fragment where a data set was due, or a command set too long")
                    if command and fragment.context_id != context:
                        raise ProtocolError("the fragments of one command set on two presentation contexts")
                    context = fragment.context_id
                    command += self.reader.read(fragment.length)
                    if fragment.last:
                        request = parse_request(bytes(command))
                        command.clear()
                        if not request.has_data_set:
                            self.answer_request(request, context)
                            request, message_due = None, math.inf
                    continue
                if request is None or fragment.context_id != context:
                    raise ProtocolError("a data set fragment without its command")
                if request.command in (CommandField.N_ACTION_RQ, CommandField.N_EVENT_REPORT_RQ):
                    if len(self.action) + fragment.length > MAX_ACTION_BYTES:
                        raise ProtocolError(f"an {request.command.name} data set of more than {MAX_ACTION_BYTES} bytes")
                    self.action += self.reader.read(fragment.length)
                    if fragment.last:
                        (self.commit if request.command is CommandField.N_ACTION_RQ else self.reported)(request, context, calling_ae)
                        request, message_due = None, math.inf
                    continue
                if self.incoming is None:
                    meta = _file_meta(request.sop_class_uid, request.sop_instance_uid, self.transfer[context], calling_ae)
                    self.incoming = _Incoming(self.policy.incoming, meta, self.policy.max_data_set_bytes)
                self.reader.copy(fragment.length, self.incoming.write)
                if fragment.last:
                    self.stored(request, context, calling_ae)
                    request, message_due = None, math.inf

    def answer_request(self, request: Request, context: int) -> None:
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

    def reported(self, request: Request, context: int, calling_ae: str) -> None:
        """An N-EVENT-REPORT-RQ: a destination's storage commitment report on results the node sent it."""
        data, self.action = bytes(self.action), bytearray()
        if not self._on_commitment_context(request, context):
            return
        understood = self.acceptor.commitments.commitment_reported(calling_ae, request.action_type, data, self.transfer[context])
        status = StoreStatus.SUCCESS if understood else StoreStatus.PROCESSING_FAILURE
        self.send(p_data(context, response(request, status, "" if understood else "report not understood")))

    def commit(self, request: Request, context: int, calling_ae: str) -> None:
        """An N-ACTION-RQ of the Storage Commitment Push Model: answered, then its report sent on this association
        (a new one follows where this one ends before the peer acknowledges it, see :meth:`serve`)."""
        data, self.action = bytes(self.action), bytearray()
        if not self._on_commitment_context(request, context):
            return
        if request.sop_instance_uid != STORAGE_COMMITMENT_INSTANCE:
            self.send(p_data(context, response(request, StoreStatus.NO_SUCH_SOP_INSTANCE, "not the well-known Storage Commitment instance")))
            return
        if request.action_type != REQUEST_STORAGE_COMMITMENT:
            self.send(p_data(context, response(request, StoreStatus.NO_SUCH_ACTION, f"action type {request.action_type}")))
            return
        try:
            report = self.acceptor.commitments.commit(calling_ae, data, self.transfer[context])
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

    def stored(self, request: Request, context: int, calling_ae: str) -> None:
        incoming, self.incoming = self.incoming, None
        assert incoming is not None
        if request.command is not CommandField.C_STORE_RQ:
            incoming.discard()
            raise ProtocolError(f"{request.command.name} with a data set")
        if self.contexts[context] != request.sop_class_uid:
            incoming.discard()
            status: int = StoreStatus.SOP_CLASS_NOT_SUPPORTED
            comment = f"SOP class {request.sop_class_uid} sent on a context for {self.contexts[context]}"
        else:
            try:
                durable = self.acceptor.fsyncs.submit(incoming.finish)
            except RuntimeError:  # the acceptor is stopping
                incoming.discard()
                raise ConnectionError("the node is stopping") from None
            try:
                sop_class, sop_instance = request.sop_class_uid, request.sop_instance_uid
                received = Received(self.number, calling_ae, sop_class, sop_instance, incoming.path, incoming.size, durable, incoming.error)
                status, comment = self.acceptor.services.receive(received)
            finally:
                incoming.path.unlink(missing_ok=True)  # stored files were moved away; refused ones go, their fsync unawaited
        self.send(p_data(context, response(request, status, comment)))

    def serve(self) -> None:
        released = False
        try:
            request = self.negotiate()
            self.acceptor.negotiated(self.sock)
            if request is not None:
                self.peer_maximum_length = request.maximum_length
                peer = f"implementation {request.implementation_class_uid or '?'}, maximum PDU {request.maximum_length or 'unlimited'}"
                log.info("association %d from %s at %s accepted (%s)", self.number, request.calling_ae, self.address, peer)
                ended = self.messages(request.calling_ae)
                released = ended == "released"
                log.info("association %d %s", self.number, ended)
        except ProtocolError as exc:
            log.warning("aborting association %d from %s: %s", self.number, self.address, exc)
            try:
                self.send(abort(exc.reason))
            except OSError:
                pass
        except TimeoutError as exc:
            why = str(exc) or f"silent for {self.policy.timeout_s:.0f} s"
            log.warning("closing association %d from %s: %s", self.number, self.address, why)
        except (OSError, ValueError) as exc:  # ConnectionError, ssl.SSLError, a socket shut by stop()
            log.warning("association %d from %s ended: %s", self.number, self.address, exc or type(exc).__name__)
        except Exception:
            log.exception("association %d from %s aborted by an error of the node", self.number, self.address)
            try:
                self.send(abort(AbortReason.NOT_SPECIFIED))
            except OSError:
                pass
        finally:
            if self.report is not None:  # ended before the peer acknowledged the report: it goes on a new association
                self.acceptor.commitments.report_later(self.report)
            if self.incoming is not None:
                self.incoming.discard()
            self.reader.close()
            if self.admitted:
                self.acceptor.left(self.number, released)


def _shut(sock: socket.socket) -> None:
    """End a connection's reads and writes; the thread serving it then ends and closes it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False


class Acceptor:
    """Listens on ``address`` and serves each association in a thread of its own."""

    def __init__(self, address: tuple[str, int], policy: Policy, services: Services, commitments: CommitmentServices) -> None:
        self.policy, self.services, self.commitments = policy, services, commitments
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when an association's socket is closed
        self._admitted: set[int] = set()
        self._stopping = False
        self._sockets: set[socket.socket] = set()
        self._pending: dict[socket.socket, float] = {}  # connections not associated yet: when each was opened
        self._numbers = itertools.count(1)
        acceptor = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                acceptor.connection(self.request, self.client_address[0])

        self._server = _Server(address, Handler)
        self.fsyncs = futures.ThreadPoolExecutor(policy.max_associations, thread_name_prefix="fsync")
        self._thread = threading.Thread(target=self._server.serve_forever, name="dicom-acceptor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and cut off the associations still open (their partial data sets are discarded); waits up to
        ``STOP_WAIT_S`` for their threads to finish."""
        with self._lock:
            self._stopping = True
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)
        with self._lock:
            self._idle.wait_for(lambda: not self._sockets, timeout=STOP_WAIT_S)
        self.fsyncs.shutdown(wait=True)

    def negotiated(self, connection: socket.socket) -> None:
        """An association's negotiation ended: its connection may no longer be closed to make room."""
        with self._lock:
            self._pending.pop(connection, None)

    def admit(self, number: int) -> bool:
        with self._lock:
            if self._stopping or len(self._admitted) >= self.policy.max_associations:
                return False
            self._admitted.add(number)
            return True

    def left(self, number: int, released: bool) -> None:
        with self._lock:
            self._admitted.discard(number)
        self.services.closed(number, released)

    def connection(self, sock: socket.socket, address: str) -> None:
        if self.policy.allowed_addresses and address not in self.policy.allowed_addresses:
            log.warning("refused a connection from %s: address not in allowed_addresses", address)
            sock.close()
            return
        opened = time.monotonic()
        evicted: socket.socket | None = None
        evicted_since = opened
        with self._lock:
            refuse = "the node is stopping" if self._stopping else ""
            if not refuse and len(self._sockets) >= MAX_CONNECTIONS_PER_ASSOCIATION * self.policy.max_associations:
                if self._pending:  # make room: the connection that has waited longest without associating goes
                    evicted = min(self._pending, key=self._pending.__getitem__)
                    evicted_since = self._pending.pop(evicted)
                else:
                    refuse = f"{len(self._sockets)} connections open and associated, {MAX_CONNECTIONS_PER_ASSOCIATION} x max_associations"
            if not refuse:
                self._sockets.add(sock)
                self._pending[sock] = opened
        if evicted is not None:
            log.warning("closed a connection that had not associated in %.0f s, to admit one from %s", opened - evicted_since, address)
            _shut(evicted)
        if refuse:
            log.warning("closed a connection from %s at once: %s", address, refuse)
            sock.close()
            return
        connection = sock
        try:
            sock.settimeout(self.policy.timeout_s)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.policy.ssl_context is not None:
                connection = self.policy.ssl_context.wrap_socket(sock, server_side=True)
                with self._lock:  # the plain socket is detached now: stop() and eviction cut off the TLS one
                    self._sockets.discard(sock)
                    self._sockets.add(connection)
                    if sock in self._pending:
                        self._pending[connection] = self._pending.pop(sock)
            _Association(self, connection, address, next(self._numbers), opened).serve()
        except (OSError, ssl.SSLError) as exc:
            log.warning("TLS handshake with %s failed: %s", address, exc)
        finally:
            with self._lock:
                self._pending.pop(sock, None)
                self._pending.pop(connection, None)
                self._sockets.discard(sock)
                self._sockets.discard(connection)
                self._idle.notify_all()
            connection.close()
            sock.close()
