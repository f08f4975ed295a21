"""The transport of the node's DICOM services: a listening socket, one thread per association reading from a
blocking socket (no polling), admission (limits on connections and associations), and each association's PDUs read
into DIMSE messages. Association control is in ``association.py``, the services in ``services.py``, the PDUs in
``upper_layer.py`` and the DIMSE commands in ``dimse.py``."""

from __future__ import annotations

import itertools
import logging
import math
import socket
import socketserver
import ssl
import threading
import time
from concurrent import futures

from dicomnode.base.uids import IMPLEMENTATION_CLASS_UID
from dicomnode.net.association import IMPLEMENTATION_VERSION, Policy, answer_context, refusal
from dicomnode.net.dimse import STORAGE_COMMITMENT, CommandField, parse_request
from dicomnode.net.incoming import Incoming, file_meta
from dicomnode.net.services import CommitmentServices, ServiceProvider, Services
from dicomnode.net.upper_layer import (
    MAX_ASSOCIATE_REQUEST,
    MAX_COMMAND,
    AbortReason,
    AssociateRequest,
    ContextResult,
    PduReader,
    PduType,
    ProtocolError,
    Rejection,
    abort,
    associate_accept,
    associate_reject,
    parse_associate_request,
    release_response,
)

log = logging.getLogger(__name__)

#: Seconds :meth:`Acceptor.stop` waits for the associations it cut off to finish.
STOP_WAIT_S = 5.0
#: Connections open at once, negotiating or associated, per ``max_associations``; more are closed at once (a flood of
#: idle connections would otherwise hold a thread and buffers each for ``timeout_s``).
MAX_CONNECTIONS_PER_ASSOCIATION = 2
#: An N-ACTION data set is read into memory: a request naming 100,000 instances fits.
MAX_ACTION_BYTES = 16 * 2**20


class _Association:
    """One association, from the A-ASSOCIATE-RQ to its release or abort."""

    def __init__(self, acceptor: Acceptor, sock: socket.socket, address: str, number: int, opened: float) -> None:
        self.acceptor, self.sock, self.address, self.number, self.opened = acceptor, sock, address, number, opened
        self.policy = acceptor.policy
        self.reader = PduReader(sock)
        self.incoming: Incoming | None = None
        self.admitted = False
        self.action = bytearray()  # an N-ACTION or N-EVENT-REPORT data set being read
        self.provider: ServiceProvider | None = None  # once the association is accepted

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
        refused = refusal(request, self.policy)
        if refused is None:
            self.admitted = self.acceptor.admit(self.number)
            if not self.admitted:
                refused = Rejection.LOCAL_LIMIT_EXCEEDED, f"more than max_associations={self.policy.max_associations} associations at once"
        if refused is not None:
            rejection, reason = refused
            self.acceptor.services.refused(request.calling_ae, self.address, reason)  # recorded before the peer hears it
            self.send(associate_reject(rejection))
            return None
        answers = [answer_context(self.policy, c.abstract_syntax, c.transfer_syntaxes, c.context_id) for c in request.contexts]
        roles = tuple((uid, scu, scp) for uid, scu, scp in request.roles if uid == STORAGE_COMMITMENT)  # its reports may come to the node
        self.send(associate_accept(request, answers, 0, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION, roles))
        contexts = {a.context_id: c.abstract_syntax for a, c in zip(answers, request.contexts, strict=True) if a.result is ContextResult.ACCEPTANCE}
        transfer = {a.context_id: a.transfer_syntax for a in answers}
        acceptor = self.acceptor
        self.provider = ServiceProvider(
            self.number, self.send, contexts, transfer, request.maximum_length, acceptor.services, acceptor.commitments, acceptor.fsyncs
        )
        return request

    def messages(self, calling_ae: str) -> str:
        """Serve DIMSE messages until the peer releases or aborts; returns which."""
        provider = self.provider
        assert provider is not None
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
                if fragment.context_id not in provider.contexts:
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
                            provider.without_data_set(request, context)
                            request, message_due = None, math.inf
                    continue
                if request is None or fragment.context_id != context:
                    raise ProtocolError("a data set fragment without its command")
                if request.command in (CommandField.N_ACTION_RQ, CommandField.N_EVENT_REPORT_RQ):
                    if len(self.action) + fragment.length > MAX_ACTION_BYTES:
                        raise ProtocolError(f"an {request.command.name} data set of more than {MAX_ACTION_BYTES} bytes")
                    self.action += self.reader.read(fragment.length)
                    if fragment.last:
                        data, self.action = bytes(self.action), bytearray()
                        (provider.commit if request.command is CommandField.N_ACTION_RQ else provider.reported)(request, context, calling_ae, data)
                        request, message_due = None, math.inf
                    continue
                if self.incoming is None:
                    meta = file_meta(request.sop_class_uid, request.sop_instance_uid, provider.transfer[context], calling_ae)
                    self.incoming = Incoming(self.policy.incoming, meta, self.policy.max_data_set_bytes)
                self.reader.copy(fragment.length, self.incoming.write)
                if fragment.last:
                    incoming, self.incoming = self.incoming, None
                    provider.store(request, context, calling_ae, incoming)
                    request, message_due = None, math.inf

    def serve(self) -> None:
        released = False
        try:
            request = self.negotiate()
            self.acceptor.negotiated(self.sock)
            if request is not None:
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
            if self.provider is not None and self.provider.report is not None:  # not acknowledged: it goes on a new association
                self.acceptor.commitments.report_later(self.provider.report)
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
