"""A real `smile-gateway serve` process, and a tiny order system that records what it gets."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from tests.brokers import wait_until
from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GatewayProcess:
    """`smile-gateway serve` on a free port; `wrap` goes before its command line (a program
    that execs what follows it, so that the process is the gateway's)."""

    def __init__(self, tmp: Path, env: dict[str, str], wrap: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "gateway.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        base.update({"GATEWAY_STORE__URL": f"sqlite:///{tmp / 'gateway.db'}",
                     "GATEWAY_WEBHOOK__PORT": str(self.port),
                     "GATEWAY_LOGGING__LEVEL": "INFO"})
        base.update(env)
        self.env = base
        self.wrap = wrap
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> GatewayProcess:
        self.proc = subprocess.Popen([*self.wrap, sys.executable, "-m", "gateway", "serve"],
                                     cwd=ROOT,
                                     env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=self.log.open("ab"))

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            try:
                return requests.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(up, 30, what="the gateway to answer /healthz")
        return self

    def stop(self, signum: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


class OrderSystem:
    """Answers POSTs with the next queued status (default 200) and records each request.
    With `drip_s`, it answers each POST a byte every `drip_s` seconds, in a header line that
    never ends: every read of the answer returns well within its timeout."""

    def __init__(self, drip_s: float | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.received: list[dict[str, Any]] = []
        self.statuses: list[int] = []
        self.drip_s = drip_s
        self.stopped = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                status = outer.statuses.pop(0) if outer.statuses else 200
                outer.received.append({"headers": dict(self.headers), "status": status,
                                       "json": json.loads(body)})
                drip_s = outer.drip_s
                if drip_s is not None:
                    self.close_connection = True
                    try:
                        self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Drip: ")
                        while not outer.stopped.wait(drip_s):
                            self.wfile.write(b"a")
                    except OSError:  # the sender gave up on the answer
                        pass
                    return
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/smile-events"
        if tls is not None:  # HTTPS, by the name its certificate gives
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
            self.url = f"https://localhost:{self.server.server_address[1]}/smile-events"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> OrderSystem:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()
