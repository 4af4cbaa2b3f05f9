"""RequestsForwarder: POSTs forwarded events to the order system with requests."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import requests

from gateway.config import ForwardSettings
from gateway.errors import ForwardError, clip
from gateway.ports import OutboxItem

# Worth another attempt: the order system is busy, timed out or briefly unavailable.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_DETAIL_BYTES = 4096  # of a refusal's body, for the dead letter's reason; the rest is not read


class RequestsForwarder:
    """The Forwarder port over HTTP: 2xx delivers; 408/429/5xx and connection errors are
    retried by the relay; any other status is final (a dead letter).

    Redirects are not followed: requests would turn a POST answered 301/302/303 into a GET of
    the new location, and that GET's 200 (a login page, say) would count as the event's
    delivery. A 3xx is a dead letter naming the Location, for forward.url to be corrected.
    """

    def __init__(self, settings: ForwardSettings, session: requests.Session | None = None) -> None:
        self.settings = settings
        self._shared = session
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        """The given session, else one per sending thread (a Session is not thread-safe);
        each keeps its connection to the order system alive."""
        if self._shared is not None:
            return self._shared
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def forward(self, item: OutboxItem) -> None:
        headers = {"Content-Type": "application/json",
                   "Idempotency-Key": item.message_id,
                   "User-Agent": "smile-gateway"}
        headers.update(item.headers)
        if self.settings.token:
            headers["Authorization"] = f"Bearer {self.settings.token}"
        try:
            with self.session.post(self.settings.url, data=item.body, headers=headers,
                                   timeout=self.settings.timeout_s, allow_redirects=False,
                                   stream=True) as response:
                status = response.status_code
                head = _head(response)
                location = response.headers.get("Location")
                retry_after = _retry_after(response.headers.get("Retry-After"))
        except requests.RequestException as exc:
            raise ForwardError(f"POST {self.settings.url} failed: {exc}") from exc
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
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP-date is GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
