"""WaitressServer: the production WSGI server for the app, with a graceful stop."""

from __future__ import annotations

import logging
import socket
from typing import Any

from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, create_server
from waitress.task import ErrorTask

from adapters.webhook import PROBLEM, problem_json
from gateway.config import WebhookSettings
from gateway.errors import ConfigError, clip

log = logging.getLogger(__name__)

# waitress's body limit is the app's plus this: waitress counts a chunked body's framing, and
# refuses a Content-Length equal to its limit; the app checks the exact limit itself
_SLACK = 65536


class _ProblemErrorTask(ErrorTask):  # type: ignore[misc]
    """What waitress answers itself (a body or headers over its limits, a request it cannot
    parse) as problem+json, like every error of the app, instead of its text/plain."""

    def execute(self) -> None:
        error = self.request.error
        code = int(error.code)
        if code == 413:  # RFC 9110's name, as the app's; the limit as configured
            title = "Content Too Large"
            limit = self.channel.server.adj.max_request_body_size - _SLACK
            detail = f"body is over the limit of {limit} bytes"
        else:
            title, detail = str(error.reason), str(error.body)
        # the request as far as waitress parsed it: a start line it could not read set no
        # command or path (and an error here would leave the client without an answer)
        method = getattr(self.request, "command", None) or "?"
        path = getattr(self.request, "path", None) or "?"
        fields = {"method": clip(method, 20), "path": clip(path, 200), "status": code,
                  "remote": self.channel.addr[0] if self.channel.addr else "?"}
        log.info("refused %s %s: %d %s: %s (from %s)", fields["method"], fields["path"], code,
                 title, clip(detail), fields["remote"], extra=fields)
        body = problem_json(code, title, detail).encode()
        self.status = f"{code} {error.reason}"
        self.response_headers.append(("Content-Type", PROBLEM))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _Channel(HTTPChannel):  # type: ignore[misc]
    error_task_class = _ProblemErrorTask


def _proxy(address: str) -> dict[str, Any]:
    """waitress's settings for one trusted reverse proxy: from it, the last X-Forwarded-For
    hop is the peer and X-Forwarded-Proto the scheme; from anyone else both are dropped."""
    if not address:
        return {}
    return {"trusted_proxy": address, "trusted_proxy_count": 1,
            "trusted_proxy_headers": {"x-forwarded-for", "x-forwarded-proto"}}


class WaitressServer:
    """Serves a WSGI app on the webhook's host and port until `run` is interrupted.

    waitress ends its loop on SystemExit or KeyboardInterrupt, after its task dispatcher
    finished the requests in progress: the signal handlers of `serve` raise SystemExit.
    """

    def __init__(self, app: Any, settings: WebhookSettings) -> None:
        self.trusted_proxy = settings.trusted_proxy
        sockets: dict[int, Any] = {}  # waitress's socket map: each listener registers in it
        try:
            self.server = create_server(
                app, map=sockets, host=settings.host, port=settings.port,
                threads=settings.threads,
                max_request_body_size=settings.max_body_bytes + _SLACK,
                max_request_header_size=65536, channel_timeout=30, ident="smile-gateway",
                clear_untrusted_proxy_headers=True, **_proxy(settings.trusted_proxy))
        except OSError as exc:  # the port is taken, the address is not this machine's, ...
            raise ConfigError("webhook.port", f"cannot listen on {settings.host}:"
                              f"{settings.port}: {exc.strerror or exc}") from exc
        except ValueError as exc:  # waitress's word for a host name that does not resolve
            cause = exc.__context__
            why = cause.strerror if isinstance(cause, socket.gaierror) else str(exc)
            raise ConfigError("webhook.host", f"cannot listen on {settings.host}:"
                              f"{settings.port}: {why}") from exc
        # one listener per address the host resolves to (a name may have an IPv4 and an IPv6)
        self.listeners = [each for each in sockets.values() if isinstance(each, BaseWSGIServer)]
        for listener in self.listeners:
            listener.channel_class = _Channel

    @property
    def port(self) -> int:
        return int(self.listeners[0].effective_port)

    def run(self) -> None:
        for listener in self.listeners:
            host = listener.effective_host
            log.info("listening on http://%s:%d%s", f"[{host}]" if ":" in host else host,
                     int(listener.effective_port),
                     f" (X-Forwarded-For believed from the trusted proxy {self.trusted_proxy})"
                     if self.trusted_proxy else "")
        self.server.run()

    def close(self) -> None:
        self.server.close()
