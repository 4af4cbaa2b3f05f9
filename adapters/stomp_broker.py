"""StompPublisher and StompConsumer: STOMP 1.2 over stomp.py, on ActiveMQ (and RabbitMQ).

Protocol edges, measured on these brokers (README, "Broker"):
- a send is durable only once its RECEIPT came back, and only with `persistent:true`;
- stomp.py adds `content-length` unless told not to, and with it ActiveMQ makes a JMS
  BytesMessage that Smile's text listeners cannot read: connections here never add it;
- stomp.py never reconnects an established connection and its receipt wait has no timeout:
  both are done here, with our own deadline;
- RabbitMQ takes the STOMP `host` header as the vhost: always send `vhost` (default "/").
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import stomp
import stomp.exception

from gateway.config import BrokerSettings, InboundSettings, endpoint_text
from gateway.errors import PublishError, StoreError, clip
from gateway.ports import Envelope, PublishOutcome
from gateway.relay import Backoff

log = logging.getLogger(__name__)


class _SaidByTheGateway(logging.Filter):
    """stomp.py warns of each connect that fails and of each heart-beat timeout; the
    publisher and the consumer say so themselves, with the broker's address and what they do
    next (their backoff), so its line would say it twice."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("could not connect to host",
                                               "heartbeat timeout"))


logging.getLogger("stomp.py").addFilter(_SaidByTheGateway())  # stomp.py's one logger

STOMP_ERRORS = (stomp.exception.StompException, OSError)


def _connection(broker: BrokerSettings, host: str, port: int) -> stomp.Connection12:
    conn = stomp.Connection12(
        [(host, port)],
        heartbeats=(broker.heartbeat_ms, broker.heartbeat_ms),
        vhost=broker.vhost,
        auto_decode=False,
        auto_content_length=False,
        reconnect_attempts_max=1,
        timeout=max(1.0, broker.receipt_timeout_s),
    )
    if broker.tls:
        # stomp.py's TLS client context: the certificate and the host name are checked
        conn.set_ssl(for_hosts=[(host, port)], ca_certs=broker.tls_ca_file or None,
                     cert_file=broker.tls_cert_file or None,
                     key_file=broker.tls_key_file or None)
    return conn


def _tls_context(broker: BrokerSettings) -> ssl.SSLContext:
    """The context stomp.py builds from the same settings, for saying why a handshake
    failed (stomp.py logs the reason and raises without it)."""
    context = ssl.create_default_context(cafile=broker.tls_ca_file or None)
    if broker.tls_cert_file:
        context.load_cert_chain(broker.tls_cert_file, broker.tls_key_file or None)
    return context


class _Handshake(stomp.ConnectionListener):  # type: ignore[misc]
    """Waits for the answer to CONNECT: stomp.py's own wait (`connect(wait=True)`) has no
    deadline, and an address that takes the TCP connection but never answers (a load
    balancer before a dead broker, a port of another protocol) would hold it for good."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: str | None = None
        self.server = ""  # CONNECTED's `server` header: "ActiveMQ/5.17.2", "RabbitMQ/3.10.8"

    def on_connected(self, frame: Any) -> None:
        self.server = frame.headers.get("server", "")
        self.done.set()

    def on_error(self, frame: Any) -> None:
        self.error = _broker_error(frame)
        self.done.set()

    def on_disconnected(self) -> None:
        self.error = self.error or "the connection was closed before CONNECTED"
        self.done.set()


def _open(broker: BrokerSettings, headers: dict[str, str]) -> tuple[stomp.Connection12, str]:
    """A connection to the first of broker.host:port and the failover brokers that answers
    CONNECT with CONNECTED within the receipt timeout, and the broker's `server` header; else
    a StompException names each one tried and why it failed."""
    failures = []
    for host, port in broker.endpoints:
        try:
            opened = _open_one(broker, host, port, headers)
        except STOMP_ERRORS as exc:
            failures.append(exc)
            continue
        if failures:  # the brokers listed before it are down: an operator wants to know
            log.warning("%s; using %s", "; ".join(map(str, failures)),
                        endpoint_text(host, port))
        return opened
    if len(failures) == 1:
        raise failures[0]
    reasons = "; ".join(str(exc).removeprefix("cannot connect to ") for exc in failures)
    raise stomp.exception.ConnectFailedException(f"cannot connect to any broker: {reasons}")


def _open_one(broker: BrokerSettings, host: str, port: int,
              headers: dict[str, str]) -> tuple[stomp.Connection12, str]:
    where = f"cannot connect to {endpoint_text(host, port)}"
    conn = _connection(broker, host, port)
    handshake = _Handshake()
    conn.set_listener("handshake", handshake)
    try:
        conn.connect(broker.user, broker.password, wait=False, headers=headers)
    except STOMP_ERRORS as exc:
        if not isinstance(exc, stomp.exception.ConnectFailedException):
            # the socket was open and sending CONNECT failed: the peer hung up (its reader
            # tells in a moment), which says more than the send's own error
            handshake.done.wait(0.5)
        why = _connect_failure(broker, host, port, exc) if handshake.error is None else \
            f"{where}: {handshake.error}"
        _quietly_disconnect(conn)
        raise stomp.exception.ConnectFailedException(why) from exc
    timeout = max(1.0, broker.receipt_timeout_s)
    if not handshake.done.wait(timeout) or handshake.error or not conn.is_connected():
        why = handshake.error or ("the connection was closed before CONNECTED"
                                  if _hung_up(conn) else
                                  f"no answer to CONNECT within {timeout:g}s (is it a STOMP "
                                  "port?)")
        _quietly_disconnect(conn)
        raise stomp.exception.ConnectFailedException(f"{where}: {why}")
    conn.remove_listener("handshake")
    return conn, handshake.server


def _endpoint_of(conn: stomp.Connection12) -> str:
    """Where a connection opened by _open is connected."""
    host, port = conn.transport.current_host_and_port or ("?", 0)
    return endpoint_text(host, port)


def _ended(conn: stomp.Connection12, where: str) -> str:
    """Why a connection to `where` (its address: stomp.py forgets it as the socket closes)
    ended that nobody closed. stomp.py's heart-beat thread, when nothing came from the broker
    within the negotiated time (a broker frozen or cut off with the connection open), closes
    the socket first, which calls on_disconnected, and only then on_heartbeat_timeout: the
    time since the last frame tells the two apart here."""
    last = getattr(conn, "received_heartbeat", None)
    allowed = getattr(conn, "receive_sleep", 0) or 0
    if last is not None and allowed and time.monotonic() - last > allowed:
        return f"heart-beat timeout: nothing from {where} for {allowed:g}s"
    return f"connection to {where} lost"


class _Tracker(stomp.ConnectionListener):  # type: ignore[misc]
    """Collects RECEIPT and ERROR frames, and notices a lost connection."""

    def __init__(self, conn: stomp.Connection12 | None = None) -> None:
        self.conn = conn
        self.where = _endpoint_of(conn) if conn is not None else ""
        self.cond = threading.Condition()
        self.receipts: set[str] = set()
        self.errors: dict[str, str] = {}
        self.broken: str | None = None

    def on_receipt(self, frame: Any) -> None:
        with self.cond:
            self.receipts.add(frame.headers.get("receipt-id", ""))
            self.cond.notify_all()

    def on_error(self, frame: Any) -> None:
        error = _broker_error(frame)
        with self.cond:
            receipt = frame.headers.get("receipt-id")
            if receipt:
                self.errors[receipt] = error
            else:
                self.broken = error
            self.cond.notify_all()

    def on_disconnected(self) -> None:
        why = _ended(self.conn, self.where) if self.conn is not None else "connection lost"
        with self.cond:
            self.broken = self.broken or why
            self.cond.notify_all()

    def on_heartbeat_timeout(self) -> None:
        with self.cond:
            self.broken = self.broken or "heart-beat timeout"
            self.cond.notify_all()


_NO_RECEIPT = "no receipt"


class _BatchFailed(Exception):
    """A batch was not confirmed (`confirmed`: the ids of its first messages that were)."""

    def __init__(self, why: str, confirmed: tuple[int, ...] = ()) -> None:
        super().__init__(why)
        self.confirmed = confirmed


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _await(tracker: _Tracker, receipt: str, timeout_s: float) -> str | None:
    """None when the receipt came back; else what went wrong instead."""
    deadline = time.monotonic() + timeout_s
    with tracker.cond:
        while receipt not in tracker.receipts:
            if receipt in tracker.errors:
                return tracker.errors.pop(receipt)
            if tracker.broken:
                return tracker.broken
            if tracker.errors:  # an ERROR for an earlier frame of this batch
                return next(iter(tracker.errors.values()))
            left = deadline - time.monotonic()
            if left <= 0:
                return f"{_NO_RECEIPT} after {timeout_s}s"
            tracker.cond.wait(left)
        tracker.receipts.discard(receipt)
    return None


def _hung_up(conn: stomp.Connection12) -> bool:
    """Whether the peer is gone though stomp.py did not say so: before CONNECTED its reader
    drops a TLS socket's error (a TLS 1.3 broker refusing the client's certificate, measured
    in about 1 run of 12) and goes on reading a socket that is no longer connected."""
    sock = getattr(conn.transport, "socket", None)
    if sock is None:
        return True
    try:
        sock.getpeername()
    except OSError:
        return True
    return False


def _connect_failure(broker: BrokerSettings, host: str, port: int, exc: BaseException) -> str:
    """Why the connection could not be opened: stomp.py's ConnectFailedException says
    nothing (it logs the socket's error and drops it), so the address is tried once more."""
    where = f"cannot connect to {endpoint_text(host, port)}"
    if str(exc):
        return f"{where}: {exc}"
    try:
        with socket.create_connection((host, port),
                                      timeout=min(2.0, broker.receipt_timeout_s)) as sock:
            if broker.tls:
                _tls_context(broker).wrap_socket(sock, server_hostname=host).close()
    except ssl.SSLError as err:
        return f"{where}: TLS: {err.reason or _why(err)}" + (
            f" ({err.verify_message})" if isinstance(err, ssl.SSLCertVerificationError) else "")
    except OSError as err:
        return f"{where}: {err.strerror or _why(err)}"
    return f"{where}: no STOMP CONNECTED frame came back"


def _text(body: Any) -> str:
    return body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")


def _broker_error(frame: Any) -> str:
    """What an ERROR frame says, as the gateway reports it: its `message` header, and the
    first line of its body when that says more. RabbitMQ puts a code or a summary in the
    header (`not_found`, `Bad CONNECT`) and the reason in the body (`NOT_FOUND - no queue
    'x' in vhost '/'`, `Access refused for user 'guest'`); ActiveMQ puts the reason in the
    header and a Java stack trace, whose first line repeats it, in the body."""
    message = frame.headers.get("message", "").strip()
    first = next((line.strip() for line in _text(frame.body).splitlines() if line.strip()), "")
    if not message:
        message = first
    elif first and message not in first:
        message = f"{message}: {first}"
    return f"broker ERROR: {clip(message)}"


class StompPublisher:
    """The Publisher port: pipelined sends, each with a receipt, one connection."""

    def __init__(self, broker: BrokerSettings, client: str = "smile-gateway") -> None:
        self.broker = broker
        self.client = client
        self._conn: stomp.Connection12 | None = None
        self._tracker = _Tracker()
        self._transactions = False  # whether a COMMIT's receipt confirms its SENDs here

    def _connected(self) -> stomp.Connection12:
        if self._conn is not None and self._conn.is_connected() and not self._tracker.broken:
            return self._conn
        self.close()
        try:
            conn, server = _open(self.broker,
                                 {"client-id": f"{self.client}-pub-{uuid.uuid4().hex[:8]}"})
        except STOMP_ERRORS as exc:
            raise PublishError(str(exc)) from exc
        tracker = _Tracker(conn)
        conn.set_listener("tracker", tracker)
        self._conn, self._tracker = conn, tracker
        # ActiveMQ Classic refuses a transaction's SEND before it answers the COMMIT (its
        # receipt confirms them all). RabbitMQ answers the COMMIT first and its ERROR for a
        # SEND follows: elsewhere each SEND waits for a receipt of its own (pipelined).
        self._transactions = server.startswith("ActiveMQ/")
        log.info("publisher connected broker=%s", _endpoint_of(conn))
        return conn

    def publish(self, envelopes: Sequence[Envelope]) -> PublishOutcome:
        """On ActiveMQ Classic, one STOMP transaction per batch: the COMMIT's receipt confirms
        every message in it with one journal write on the broker. ActiveMQ syncs its journal
        for each persistent SEND that asks for a receipt, so per-message receipts, pipelined
        or not, run at the disk's sync rate; a transaction runs near the no-receipt rate and
        stays durable. On other brokers (RabbitMQ confirms a COMMIT before it refuses a SEND
        in it), every SEND with its own receipt, pipelined.

        When a batch fails (an ERROR, a dropped connection, no receipt in time) the broker
        rolls the uncommitted transaction back (the pipelined messages already confirmed
        stand), and the rest is sent again one message at a time, each with its own receipt,
        to find the message the broker refuses."""
        conn = self._connected()
        try:
            if self._transactions:
                self._send_transaction(conn, envelopes)
            else:
                self._send_pipelined(conn, envelopes)
            return PublishOutcome(tuple(e.item_id for e in envelopes), {})
        except _BatchFailed as exc:
            log.warning("batch of %d failed (%s): sending one by one", len(envelopes), exc)
            self.close()
            confirmed = exc.confirmed  # their receipts came back: they stand
        rest = envelopes[len(confirmed):]
        try:
            outcome = self._isolate(rest)
        except PublishError as exc:
            raise PublishError(str(exc), [*confirmed, *exc.confirmed]) from exc
        return PublishOutcome((*confirmed, *outcome.confirmed), outcome.refused)

    def _send_transaction(self, conn: stomp.Connection12, envelopes: Sequence[Envelope]) -> None:
        tracker = self._tracker
        tx = f"tx-{uuid.uuid4().hex}"
        receipt = f"commit-{tx}"
        try:
            conn.begin(transaction=tx)
            for envelope in envelopes:
                headers = {**envelope.headers, "persistent": "true", "transaction": tx}
                conn.send(envelope.destination, envelope.body, headers=headers)
            conn.commit(transaction=tx, receipt=receipt)
        except STOMP_ERRORS as exc:
            raise _BatchFailed(f"send failed: {_why(exc)}") from exc
        problem = _await(tracker, receipt, self.broker.receipt_timeout_s)
        if problem is not None:
            raise _BatchFailed(problem)

    def _send_pipelined(self, conn: stomp.Connection12, envelopes: Sequence[Envelope]) -> None:
        """Every SEND with a receipt of its own, all in flight at once, then the receipts
        awaited in order. All confirmed, or _BatchFailed with `.confirmed`, the ids of the
        messages before the first that was not (a later one's receipt does not count before
        an earlier one's: the earlier one is resent first, in order)."""
        receipts: list[str] = []
        failure = None
        try:
            for envelope in envelopes:
                receipts.append(_send_with_receipt(conn, envelope))
        except STOMP_ERRORS as exc:  # the ones sent before may still be confirmed
            failure = f"send failed: {_why(exc)}"
        confirmed: list[int] = []
        for envelope, receipt in zip(envelopes, receipts, strict=False):
            problem = _await(self._tracker, receipt, self.broker.receipt_timeout_s)
            if problem is not None:
                raise _BatchFailed(problem, tuple(confirmed))
            confirmed.append(envelope.item_id)
        if failure is not None:
            raise _BatchFailed(failure, tuple(confirmed))

    def _isolate(self, envelopes: Sequence[Envelope]) -> PublishOutcome:
        confirmed: list[int] = []
        refused: dict[int, str] = {}
        held: set[str] = set()  # usns with a refused message: later ones wait, in order
        for envelope in envelopes:
            if envelope.usn in held:
                continue
            try:
                conn = self._connected()
            except PublishError as exc:
                raise PublishError(str(exc), confirmed) from exc
            try:
                receipt = _send_with_receipt(conn, envelope)
                problem = _await(self._tracker, receipt, self.broker.receipt_timeout_s)
            except STOMP_ERRORS as exc:
                problem = f"send failed: {_why(exc)}"
            if problem is None:
                confirmed.append(envelope.item_id)
                continue
            if problem.startswith(_NO_RECEIPT):
                # A slow or blocked broker (flow control, a full store) is not the message's
                # fault: stop here, keep it pending, and let the relay back off.
                self.close()
                raise PublishError(problem, confirmed)
            refused[envelope.item_id] = problem
            held.add(envelope.usn)
            if self._tracker.broken or self._tracker.errors:
                self.close()  # start the next message on a clean connection
        return PublishOutcome(tuple(confirmed), refused)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            _quietly_disconnect(conn)


def _send_with_receipt(conn: stomp.Connection12, envelope: Envelope) -> str:
    """One persistent SEND asking for a receipt; the receipt's id."""
    receipt = f"{envelope.item_id}-{uuid.uuid4().hex[:12]}"
    conn.send(envelope.destination, envelope.body,
              headers={**envelope.headers, "persistent": "true"}, receipt=receipt)
    return receipt


def _quietly_disconnect(conn: stomp.Connection12, receipt_timeout: float | None = None) -> None:
    """Disconnect, never raising; with `receipt_timeout`, DISCONNECT asks for a receipt (so
    that the broker has read every earlier frame, acks included) and waits that long for it.
    stomp.py's own wait for that receipt has no deadline: a broker that stopped answering
    (and heart-beats off) would keep a shutdown waiting for good."""
    try:
        if not conn.is_connected():  # no CONNECTED yet (or any more): end the reader thread
            conn.transport.disconnect_socket()
        elif receipt_timeout is None:
            conn.disconnect()
        else:
            waiting = threading.Thread(target=_disconnect, args=(conn,), daemon=True,
                                       name="stomp-disconnect")
            waiting.start()
            waiting.join(receipt_timeout)
            if waiting.is_alive():
                log.warning("no receipt for DISCONNECT within %gs: closing the connection",
                            receipt_timeout)
                conn.transport.disconnect_socket()
    except STOMP_ERRORS:
        pass


def _disconnect(conn: stomp.Connection12) -> None:
    with contextlib.suppress(*STOMP_ERRORS):
        conn.disconnect(receipt=str(uuid.uuid4()))


# ---------------------------------------------------------------------------------------------

Handler = Callable[[dict[str, str], bytes], str]


class _Deliveries(stomp.ConnectionListener):  # type: ignore[misc]
    """One connection's frames, queued for the consumer's own thread: stomp.py's reader
    thread only reads (heart-beats keep flowing while a message is handled), and the store is
    used from one long-lived thread (a reader thread per reconnect would each open a store
    connection of its own, kept until the store closes)."""

    def __init__(self, consumer: StompConsumer, conn: stomp.Connection12) -> None:
        self.consumer = consumer
        self.conn = conn
        self.where = _endpoint_of(conn)

    def on_message(self, frame: Any) -> None:
        self.consumer._inbox.put((self.conn, frame))

    def on_disconnected(self) -> None:
        self.consumer._lost(self.conn, _ended(self.conn, self.where))

    def on_heartbeat_timeout(self) -> None:
        self.consumer._lost(self.conn, "heart-beat timeout")

    def on_error(self, frame: Any) -> None:
        # STOMP 1.2: the broker closes the connection after an ERROR. RabbitMQ keeps it open
        # after refusing a SUBSCRIBE, leaving a consumer subscribed to nothing: it is ended
        # here either way, and reconnected after a backoff.
        error = _broker_error(frame)
        log.error("consumer: %s", error)
        self.consumer._refused(self.conn, error)


_REFUSAL_QUIET_S = 1.0
_PREFETCH = "100"  # deliveries unacknowledged at a time, per consumer


class StompConsumer:
    """Subscribes to the inbound destination and hands each message to `handler`.

    `ack:client-individual`: a message is acknowledged only after the handler returned,
    which the service does only after the store committed (or recorded a dead letter).
    When the handler raises StoreError, nothing is acked and the same delivery is handed to
    it again with backoff, on the same connection, until the store takes it (or the
    connection goes, or the consumer stops: then the broker delivers it again). Giving it
    back at each failure would spend its deliveries: a RabbitMQ quorum queue drops a message
    after its x-delivery-limit, ActiveMQ Artemis moves it to its DLQ. A topic gets a durable
    subscription. The handler runs on the thread that runs `run`, one message after another.
    """

    def __init__(self, broker: BrokerSettings, inbound: InboundSettings, handler: Handler,
                 poison: Callable[[dict[str, str], bytes, str], object],
                 client: str = "smile-gateway") -> None:
        self.broker = broker
        self.inbound = inbound
        self.handler = handler
        self.poison = poison
        self.client = client
        self._conn: stomp.Connection12 | None = None
        self._lost_event = threading.Event()
        self._inbox: queue.Queue[tuple[stomp.Connection12, Any]] = queue.Queue()
        self.outcomes: collections.Counter[str] = collections.Counter()  # acked, by outcome
        # why it could not connect or the broker refused it, until it could again
        self.last_failure: str | None = None
        self._error: str | None = None  # the broker's ERROR that ended this connection
        self._tracker = _Tracker()  # the connection's receipts (a dead letter's copy)

    def _connect(self) -> None:
        topic = self.inbound.destination.startswith("/topic/")
        headers = {"client-id": self.inbound.subscription_name} if topic else \
            {"client-id": f"{self.client}-sub-{uuid.uuid4().hex[:8]}"}
        conn, _ = _open(self.broker, headers)
        conn.set_listener("deliveries", _Deliveries(self, conn))
        self._tracker = _Tracker(conn)
        conn.set_listener("tracker", self._tracker)
        # at most _PREFETCH unacknowledged at a time, in ActiveMQ's word and RabbitMQ's (whose
        # default is no limit: a backlog would all be pushed into the inbox, into memory)
        sub_headers = {"activemq.prefetchSize": _PREFETCH, "prefetch-count": _PREFETCH}
        if self.inbound.exclusive and not topic:
            # of several gateways on the queue, the broker picks one for every message and
            # moves to the next when it goes: a subscription's documents stay in order
            sub_headers["activemq.exclusive"] = "true"
        if topic:
            # ActiveMQ's durable topic subscription: client-id on CONNECT + this name.
            sub_headers["activemq.subscriptionName"] = self.inbound.subscription_name
            sub_headers["durable"] = "true"  # RabbitMQ's spelling
            sub_headers["auto-delete"] = "false"
            sub_headers["x-queue-name"] = self.inbound.subscription_name  # RabbitMQ's queue
        self._lost_event.clear()
        self._conn = conn
        conn.subscribe(self.inbound.destination, id="inbound", ack="client-individual",
                       headers=sub_headers)
        log.info("consumer subscribed destination=%s broker=%s", self.inbound.destination,
                 _endpoint_of(conn))

    def _refused(self, conn: stomp.Connection12, why: str) -> None:
        if conn is self._conn:
            self.last_failure = self._error = why
            self._lost_event.set()

    def _lost(self, conn: stomp.Connection12, why: str) -> None:
        """The connection in use ended (one the consumer let go of, at a stop or after a
        failure it already said, is no news)."""
        if conn is not self._conn:
            return
        if not self._lost_event.is_set():
            log.warning("consumer: %s", why)
        self._lost_event.set()

    def _deliver(self, conn: stomp.Connection12, frame: Any, stop: threading.Event) -> None:
        headers = {str(k): str(v) for k, v in frame.headers.items()}
        body = frame.body if isinstance(frame.body, bytes) else str(frame.body).encode()
        message_id = headers.get("message-id")
        backoff: Backoff | None = None
        while True:
            try:
                outcome = self._handle(headers, body)
                break
            except StoreError as exc:
                if backoff is None:
                    log.error("store unavailable, leaving message-id=%s unacknowledged: %s",
                              message_id, exc, extra={"message_id": message_id})
                    backoff = Backoff(self.broker.reconnect_initial_s,
                                      self.broker.reconnect_max_s)
                delay = backoff.next_delay()
                log.warning("consumer: %s; taking messages again in %.1fs",
                            exc if str(exc).startswith("store unavailable") else
                            f"store unavailable: {exc}", delay)
                if not self._pause(stop, delay):
                    return  # not acked: the broker delivers it again, to whoever comes next
        if backoff is not None:
            log.info("store available again: message-id=%s taken", message_id,
                     extra={"message_id": message_id})
        try:
            conn.ack(headers.get("ack") or headers.get("message-id", ""))
            self.outcomes[outcome] += 1
        except STOMP_ERRORS as exc:
            # not acked: the broker redelivers and the dedupe key makes it a no-op
            log.warning("ack failed message-id=%s: %s", message_id, exc,
                        extra={"message_id": message_id})
            return
        if outcome == "dead-letter" and self.inbound.dead_letter_destination:
            self._copy(conn, headers, body)

    def _handle(self, headers: dict[str, str], body: bytes) -> str:
        """The handler's outcome; a handler that fails unexpectedly makes the message a
        dead letter (a bug must not make a message loop forever). Raises StoreError."""
        try:
            return self.handler(headers, body)
        except StoreError:
            raise
        except Exception as exc:
            log.exception("handler failed on message-id=%s", headers.get("message-id"),
                          extra={"message_id": headers.get("message-id")})
            self.poison(headers, body, f"handler failed: {exc!r}")
            return "dead-letter"

    def _pause(self, stop: threading.Event, delay: float) -> bool:
        """Wait `delay`; False, sooner, if the consumer stops or its connection goes."""
        deadline = time.monotonic() + delay
        while not stop.is_set() and not self._lost_event.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            stop.wait(min(left, 0.2))
        return False

    def _copy(self, conn: stomp.Connection12, headers: dict[str, str], body: bytes) -> None:
        """The dead letter's copy to inbound.dead_letter_destination, after the ack (the
        letter is in the store: a copy the broker refuses must not bring the message back),
        confirmed by a receipt or said not to be."""
        where = self.inbound.dead_letter_destination
        receipt = str(uuid.uuid4())
        try:
            conn.send(where, body, headers={**_passed_on(headers, body), "persistent": "true"},
                      receipt=receipt)
        except STOMP_ERRORS as exc:
            log.warning("copy of message-id=%s to %s not sent (the dead letter is in the "
                        "store): %s", headers.get("message-id"), where, _why(exc),
                        extra={"message_id": headers.get("message-id")})
            return
        problem = _await(self._tracker, receipt, self.broker.receipt_timeout_s)
        if problem is not None:
            log.warning("copy of message-id=%s to %s not confirmed (the dead letter is in the "
                        "store): %s", headers.get("message-id"), where, problem,
                        extra={"message_id": headers.get("message-id")})

    def run(self, stop: threading.Event) -> None:
        """Connect, subscribe, and reconnect with backoff until `stop` is set."""
        backoff = Backoff(self.broker.reconnect_initial_s, self.broker.reconnect_max_s)
        refused: str | None = None  # the ERROR that ended the last connection
        while not stop.is_set():
            try:
                self._connect()
            except STOMP_ERRORS as exc:
                self.last_failure = _why(exc)
                delay = backoff.next_delay()
                log.warning("consumer: %s; retrying in %.1fs", self.last_failure, delay)
                stop.wait(delay)
                continue
            # a refusal is answered at once (RabbitMQ's ERROR follows SUBSCRIBE within
            # milliseconds): it stays the consumer's failure until a quiet second has passed
            connected_at = time.monotonic()
            proven = connected_at + _REFUSAL_QUIET_S
            delivered = False
            if refused is None and self._error is None:
                self.last_failure = None
            while not stop.is_set() and not self._lost_event.is_set():
                if refused is not None and self._error is None and time.monotonic() >= proven:
                    self.last_failure = refused = None
                    backoff.reset()
                try:
                    conn, frame = self._inbox.get(timeout=0.2)
                except queue.Empty:
                    continue
                if conn is self._conn:
                    delivered = True
                    self._deliver(conn, frame, stop)
                    if refused is None:
                        backoff.reset()  # a message came: a failure after starts over
            conn, self._conn = self._conn, None
            if conn is not None:
                _quietly_disconnect(conn, self.broker.receipt_timeout_s if stop.is_set()
                                    else None)
            self._forget_queued()
            error, self._error = self._error, None
            refused = error
            if error is None:
                lasted = time.monotonic() - connected_at
                if delivered or lasted >= self.broker.reconnect_max_s:
                    backoff.reset()  # a connection lost, not refused: reconnect at once
                elif not stop.is_set():
                    # ended on its own before it brought anything: a broker that drops this
                    # client each time would otherwise be a loop of connections
                    delay = backoff.next_delay()
                    log.warning("consumer: the connection ended after %.1fs with no message; "
                                "reconnecting in %.1fs", lasted, delay)
                    stop.wait(delay)
            elif not stop.is_set():
                delay = backoff.next_delay()
                log.warning("consumer: %s; retrying in %.1fs", error, delay)
                stop.wait(delay)
        log.info("consumer stopped")

    def _forget_queued(self) -> None:
        """Frames of a connection that is gone were not acknowledged: the broker delivers
        them again (to the next connection), so they are dropped here, not handled."""
        while True:
            try:
                self._inbox.get_nowait()
            except queue.Empty:
                return


def _passed_on(headers: dict[str, str], body: bytes) -> dict[str, str]:
    """The headers of a message passed on: not those the broker set for its delivery, and a
    content-length if it came with one (a JMS BytesMessage stays one) or holds a NUL byte:
    without it, STOMP ends the frame at the first NUL and the broker reads the rest as a
    broken frame."""
    skip = {"message-id", "subscription", "ack", "destination", "content-length"}
    kept = {k: v for k, v in headers.items() if k not in skip}
    if "content-length" in headers or b"\x00" in body:
        kept["content-length"] = str(len(body))
    return kept
