"""RequestsForwarder: POSTs forwarded events to the order system with requests."""

from __future__ import annotations

import threading

import requests

from gateway.config import ForwardSettings
from gateway.errors import ForwardError, clip
from gateway.ports import OutboxItem

# Worth another attempt: the order system is busy, timed out or briefly unavailable.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class RequestsForwarder:
    """The Forwarder port over HTTP: 2xx delivers; 408/429/5xx and connection errors are
    retried by the relay; any other status is final (a dead letter)."""

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
            response = self.session.post(self.settings.url, data=item.body, headers=headers,
                                         timeout=self.settings.timeout_s)
        except requests.RequestException as exc:
            raise ForwardError(f"POST {self.settings.url} failed: {exc}") from exc
        if 200 <= response.status_code < 300:
            return
        detail = f"POST {self.settings.url} answered {response.status_code}: {clip(response.text)}"
        raise ForwardError(detail, retryable=response.status_code in RETRYABLE_STATUS)
