"""RequestsForwarder: POSTs forwarded events to the order system with requests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests
import urllib3.poolmanager
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from gateway.config import ForwardSettings
from gateway.errors import ForwardError, clip
from gateway.ports import OutboxItem

# Worth another attempt: the order system is busy, timed out or briefly unavailable.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_DETAIL_BYTES = 4096  # of a refusal's body, for the dead letter's reason; the rest is not read
_LATE_TICK_S = 0.05  # how often a call past its deadline, still connecting, is looked at again


class _Call:
    """One POST in progress: its deadline, and the connection it is sent on once it has one."""

    __slots__ = ("conn", "deadline", "expired", "open")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.conn: HTTPConnection | None = None
        self.open = True  # False once its answer is read: its connection may go back to the pool
        self.expired = False


_current = threading.local()  # the call this thread is making (read by the connections below)


class _WatchedHTTPConnection(HTTPConnection):
    """A connection that lets the call it is sent for know it, so that the deadline can end it."""

    def request(self, *args: Any, **kwargs: Any) -> None:
        call: _Call | None = getattr(_current, "call", None)
        if call is not None:
            call.conn = self
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(_WatchedHTTPConnection, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _WatchedAdapter(HTTPAdapter):
    """requests' adapter over connections the deadline can end (a proxy's too, but SOCKS)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        if manager.pool_classes_by_scheme is urllib3.poolmanager.pool_classes_by_scheme:
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


class _Deadlines:
    """Holds each POST to forward.timeout_s in all. requests' timeout bounds each connect and
    each read on its own: an order system that sends a byte of its answer every few seconds
    would hold a sending thread (and the shutdown waiting for it) for hours. A call past its
    deadline has its socket shut, which ends the read it is blocked in at once."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._calls: set[_Call] = set()
        self._watcher: threading.Thread | None = None
        self._wake_at: float | None = None  # when the watcher looks next (None: when called)

    @contextmanager
    def call(self, seconds: float) -> Iterator[_Call]:
        call = _Call(time.monotonic() + seconds)
        with self._cond:
            self._calls.add(call)
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch, name="forward-deadlines",
                                                 daemon=True)
                self._watcher.start()
            # not once per POST: only when the watcher would look too late for this call
            if self._wake_at is None or call.deadline < self._wake_at - _LATE_TICK_S:
                self._cond.notify()
        _current.call = call
        try:
            yield call
        finally:
            _current.call = None
            with self._cond:
                self._calls.discard(call)

    def answered(self, call: _Call) -> None:
        """The call's answer is read: from now on its connection is not the call's to end."""
        with self._cond:
            call.open = False

    def _watch(self) -> None:
        with self._cond:
            while True:
                now, wait = time.monotonic(), None
                for call in self._calls:
                    if not call.open or call.expired:
                        continue
                    if call.deadline > now:
                        left = call.deadline - now
                    elif call.conn is not None and call.conn.sock is not None:
                        call.expired = True
                        _shut(call.conn.sock)
                        continue
                    else:  # still connecting (connect has its own timeout): look again soon
                        left = _LATE_TICK_S
                    wait = left if wait is None else min(wait, left)
                self._wake_at = None if wait is None else now + wait
                self._cond.wait(wait)


def _shut(sock: socket.socket) -> None:
    """End the reads and writes on a socket another thread is blocked in (not close: the fd
    stays the owner's). socket.socket's own shutdown, also for TLS: SSLSocket's would drop
    its SSL object under the reading thread."""
    with suppress(OSError):  # already closed by its owner
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class RequestsForwarder:
    """The Forwarder port over HTTP: 2xx delivers; 408/429/5xx and connection errors are
    retried by the relay; any other status is final (a dead letter).

    forward.timeout_s bounds each POST as a whole: connecting, sending, and reading the
    answer's head and up to _DETAIL_BYTES of its body. A POST past it is retried like a timeout.

    Redirects are not followed: requests would turn a POST answered 301/302/303 into a GET of
    the new location, and that GET's 200 (a login page, say) would count as the event's
    delivery. A 3xx is a dead letter naming the Location, for forward.url to be corrected.
    """

    def __init__(self, settings: ForwardSettings) -> None:
        self.settings = settings
        self._local = threading.local()
        self._deadlines = _Deadlines()

    @property
    def session(self) -> requests.Session:
        """One per sending thread (a Session is not thread-safe), over connections the
        deadline can end; each keeps its connection to the order system alive."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            for scheme in ("http://", "https://"):
                session.mount(scheme, _WatchedAdapter())
        return session

    @property
    def _client_certificate(self) -> str | tuple[str, str] | None:
        cert, key = self.settings.cert_file, self.settings.key_file
        return (cert, key) if cert and key else cert or None

    def forward(self, item: OutboxItem) -> None:
        headers = {"Content-Type": "application/json",
                   "Idempotency-Key": item.message_id,
                   "User-Agent": "smile-gateway"}
        headers.update(item.headers)
        if self.settings.token:
            headers["Authorization"] = f"Bearer {self.settings.token}"
        timeout = self.settings.timeout_s
        late = (f"POST {self.settings.url} failed: no whole answer within forward.timeout_s "
                f"({timeout:g} s)")
        with self._deadlines.call(timeout) as call:
            try:
                with self.session.post(self.settings.url, data=item.body, headers=headers,
                                       timeout=timeout, allow_redirects=False, stream=True,
                                       verify=self.settings.ca_file or True,
                                       cert=self._client_certificate) as response:
                    status = response.status_code
                    head = _head(response)
                    self._deadlines.answered(call)
                    location = response.headers.get("Location")
                    retry_after = _retry_after(response.headers.get("Retry-After"))
            except requests.RequestException as exc:
                raise ForwardError(late if call.expired else
                                   f"POST {self.settings.url} failed: {exc}") from exc
        if call.expired:  # cut off: http.client may take a head cut short for a whole one
            raise ForwardError(late)
        if 200 <= status < 300:
            return
        detail = f"POST {self.settings.url} answered {status}"
        if 300 <= status < 400:
            detail += (f" to {location}: redirects are not followed (set forward.url to where "
                       "the events go)" if location else ": redirects are not followed")
        if head:
            detail += f": {clip(head.decode('utf-8', 'replace'))}"
        raise ForwardError(detail, retryable=status in RETRYABLE_STATUS, retry_after=retry_after)


def _head(response: requests.Response) -> bytes:
    """Up to _DETAIL_BYTES of the body. A small body is read to its end, so that the
    connection goes back to the pool for the next POST; a larger one is cut there (closing
    the connection) rather than held in memory."""
    head = b""
    for chunk in response.iter_content(_DETAIL_BYTES):
        head += chunk
        if len(head) >= _DETAIL_BYTES:
            break
    return head[:_DETAIL_BYTES]


def _retry_after(value: str | None) -> float | None:
    """Retry-After (RFC 9110 §10.2.3) in seconds from now: delay-seconds or an HTTP-date;
    None when absent or unreadable (the relay's own backoff then)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²" is a digit to str.isdigit, not to float
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP-date is GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
