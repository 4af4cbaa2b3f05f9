"""Helpers for tests against real brokers: the project's ActiveMQ (scripts/activemq.sh) and,
for the compatibility tests, the machine's RabbitMQ with its STOMP plugin
(scripts/rabbitmq-stomp.sh)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import stomp

from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "activemq.sh"
HOST = "127.0.0.1"
STOMP_PORT = int(os.environ.get("STOMP_PORT", "61613"))
OPENWIRE_PORT = int(os.environ.get("OPENWIRE_PORT", "61616"))
RABBIT_STOMP_PORT = int(os.environ.get("RABBIT_STOMP_PORT", "61623"))


@dataclass(frozen=True)
class Broker:
    """A STOMP broker the tests reach: where, how to log in, and the command that starts it."""

    name: str
    port: int
    user: str
    password: str
    fix: str

    def __str__(self) -> str:  # the test id
        return self.name


ACTIVEMQ = Broker("activemq", STOMP_PORT, "test", "test", "make broker")
RABBITMQ = Broker("rabbitmq", RABBIT_STOMP_PORT, "guest", "guest",
                  "scripts/rabbitmq-stomp.sh start")


def port_open(port: int, host: str = HOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def require_broker(broker: Broker = ACTIVEMQ) -> None:
    """A missing broker fails the run under CI=true; elsewhere it skips with the fix."""
    if port_open(broker.port):
        return
    message = (f"no STOMP broker ({broker.name}) on {HOST}:{broker.port}: run `{broker.fix}` "
               "(or `make test`, which starts it)")
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def unique_queue(name: str) -> str:
    return f"/queue/test.{name}.{uuid.uuid4().hex[:10]}"


def rabbitmq_single_active_queue(name: str) -> str:
    """A durable queue declared on the machine's RabbitMQ with x-single-active-consumer, as an
    operator declares it beforehand (rabbitmqadmin, a definitions file): its /amq/queue/
    destination, which STOMP uses without declaring it again."""
    return rabbitmq_queue(name, '{<<"x-single-active-consumer">>, bool, true}')


def rabbitmq_queue(name: str, *arguments: str) -> str:
    """A durable queue declared on the machine's RabbitMQ with `arguments` (Erlang terms:
    `{<<"x-queue-type">>, longstr, <<"quorum">>}`), its /amq/queue/ destination. Named
    test.*, so that `scripts/rabbitmq-stomp.sh stop` removes it."""
    queue = f"test.{name}.{uuid.uuid4().hex[:10]}"
    declare = (f'rabbit_amqqueue:declare(rabbit_misc:r(<<"/">>, queue, <<"{queue}">>), true, '
               f'false, [{", ".join(arguments)}], none, <<"guest">>).')
    subprocess.run(["rabbitmqctl", "-q", "eval", declare], check=True, capture_output=True,
                   timeout=60)
    return f"/amq/queue/{queue}"


@dataclass
class Received:
    frames: list[Any] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)


class _Collector(stomp.ConnectionListener):  # type: ignore[misc]
    def __init__(self, received: Received) -> None:
        self.received = received

    def on_message(self, frame: Any) -> None:
        with self.received.cond:
            self.received.frames.append(frame)
            self.received.cond.notify_all()


def connect(broker: Broker = ACTIVEMQ) -> stomp.Connection12:
    conn = stomp.Connection12([(HOST, broker.port)], vhost="/", auto_decode=False,
                              auto_content_length=False, heartbeats=(0, 0))
    conn.connect(broker.user, broker.password, wait=True)
    return conn


def receive(destination: str, count: int, timeout: float = 30.0, idle: float | None = None,
            broker: Broker = ACTIVEMQ) -> list[Any]:
    """Frames from `destination` until `count` arrived, the timeout passed, or (with idle)
    nothing came for that long; auto-acknowledged."""
    received = Received()
    conn = stomp.Connection12([(HOST, broker.port)], vhost="/", auto_decode=False,
                              heartbeats=(0, 0))
    conn.set_listener("collector", _Collector(received))
    conn.connect(broker.user, broker.password, wait=True)
    conn.subscribe(destination, id="t", ack="auto")
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    seen = 0
    try:
        with received.cond:
            while len(received.frames) < count:
                now = time.monotonic()
                if now >= deadline:
                    break
                if len(received.frames) != seen:
                    seen, last = len(received.frames), now
                if idle is not None and now - last >= idle:
                    break
                received.cond.wait(min(0.2, deadline - now))
    finally:
        conn.disconnect()
    return list(received.frames)


def send(destination: str, body: bytes, headers: dict[str, str],
         broker: Broker = ACTIVEMQ) -> None:
    conn = connect(broker)
    try:
        conn.send(destination, body, headers={**headers, "persistent": "true"},
                  receipt=str(uuid.uuid4()))
        time.sleep(0.05)
    finally:
        conn.disconnect(receipt=str(uuid.uuid4()))


class BrokerInstance:
    """A broker of its own (own folder and ports), for tests that kill and restart it."""

    def __init__(self, base: Path, stomp_port: int, openwire_port: int,
                 **extra: str) -> None:
        """`extra`: more of scripts/activemq.sh's variables (STOMP_SSL_PORT, SSL_KEYSTORE)."""
        self.env = {**os.environ, "ACTIVEMQ_BASE": str(base), "STOMP_PORT": str(stomp_port),
                    "OPENWIRE_PORT": str(openwire_port), "ACTIVEMQ_HEAP": "192m", **extra}
        self.stomp_port = stomp_port
        self.pidfile = base / "activemq.pid"

    def _script(self, action: str) -> None:
        subprocess.run([str(SCRIPT), action], env=self.env, check=True, timeout=120,
                       capture_output=True)

    def start(self) -> None:
        self._script("start")

    def kill(self) -> None:
        self._script("kill")

    def stop(self) -> None:
        self.resume()  # a frozen JVM cannot take the TERM that stops it
        self._script("stop")

    def freeze(self) -> None:
        """SIGSTOP: the broker holds its connections open and answers nothing, heart-beats
        included (a hung JVM, or a host gone behind a network partition)."""
        os.kill(int(self.pidfile.read_text()), signal.SIGSTOP)

    def resume(self) -> None:
        if self.pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(self.pidfile.read_text()), signal.SIGCONT)


def wait_until(predicate: Any, timeout: float, interval: float = 0.1, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


class Endpoint:
    """A TCP listener on loopback that takes connections and, per `answer`, says nothing
    (`silent`: a load balancer before a dead broker), hangs up at once (`close`), or answers
    CONNECT with CONNECTED (no heart-beats) and then nothing more (`frozen`: a broker that
    stopped answering), or answers CONNECT and hangs up at the next frame (`hangup`: a broker
    that drops each client after it subscribes). `accepted` counts the connections."""

    def __init__(self, answer: str) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.answer = answer
        self.held: list[socket.socket] = []
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.accepted += 1
            if self.answer == "close":
                client.close()
                continue
            self.held.append(client)
            if self.answer in ("frozen", "hangup"):
                threading.Thread(target=self._connected, args=(client, self.answer == "hangup"),
                                 daemon=True).start()

    @staticmethod
    def _connected(client: socket.socket, hangup: bool) -> None:
        try:
            received = b""
            while b"\x00" not in received:
                chunk = client.recv(4096)
                if not chunk:
                    return
                received += chunk
            client.sendall(b"CONNECTED\nversion:1.2\nheart-beat:0,0\n\n\x00")
            while client.recv(4096):
                if hangup:
                    client.close()
                    return
                # frozen: frames read, never answered
        except OSError:
            pass

    def close(self) -> None:
        self.server.close()
        for client in self.held:
            client.close()


def make_certificate(folder: Path, name: str, hosts: Sequence[str]) -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) for `hosts` (DNS names or IP addresses), and
    its unencrypted key, made with openssl: (cert.pem, key.pem)."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.pem", folder / f"{name}-key.pem"
    names = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() else f"DNS:{h}" for h in hosts)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={hosts[0]}", "-addext", f"subjectAltName={names}",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class TlsFront:
    """A TLS listener on loopback in front of a plain STOMP port, as a broker's stomp+ssl
    connector is: each connection's bytes, decrypted, go to `target` and back. With
    `client_ca`, a client certificate signed by it is required (mutual TLS)."""

    def __init__(self, cert: Path, key: Path, target: int, client_ca: Path | None = None) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        if client_ca is not None:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(client_ca)
        self.server = socket.create_server((HOST, 0))
        self.port = self.server.getsockname()[1]
        self.target = target
        self.refused: list[str] = []  # the handshakes that failed, and why
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(raw,), daemon=True).start()

    def _relay(self, raw: socket.socket) -> None:
        try:
            client = self.context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            self.refused.append(str(exc))
            raw.close()
            return
        upstream = socket.create_connection((HOST, self.target))
        try:  # one thread per connection: an SSL object is not for two threads at once
            while True:
                ready = [client] if client.pending() else \
                    select.select([client, upstream], [], [])[0]
                for source in ready:
                    data = source.recv(65536)
                    if not data:
                        return
                    (upstream if source is client else client).sendall(data)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self.server.close()
