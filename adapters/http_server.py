"""WaitressServer: the production WSGI server for the app, with a graceful stop."""

from __future__ import annotations

import logging
from typing import Any

from waitress.server import create_server

from gateway.config import WebhookSettings
from gateway.errors import ConfigError

log = logging.getLogger(__name__)


class WaitressServer:
    """Serves a WSGI app on the webhook's host and port until `run` is interrupted.

    waitress ends its loop on SystemExit or KeyboardInterrupt, after its task dispatcher
    finished the requests in progress: the signal handlers of `serve` raise SystemExit.
    """

    def __init__(self, app: Any, settings: WebhookSettings) -> None:
        try:
            self.server = create_server(
                app, host=settings.host, port=settings.port, threads=settings.threads,
                # a little over the app's own limit, so that the app answers 413 itself
                max_request_body_size=settings.max_body_bytes + 65536,
                max_request_header_size=65536, channel_timeout=30, ident="smile-gateway",
                clear_untrusted_proxy_headers=True)
        except OSError as exc:  # the port is taken, the address is not this machine's, ...
            raise ConfigError("webhook.port", f"cannot listen on {settings.host}:"
                              f"{settings.port}: {exc.strerror or exc}") from exc

    @property
    def port(self) -> int:
        return int(self.server.effective_port)

    def run(self) -> None:
        log.info("listening on http://%s:%d", self.server.effective_host, self.port)
        self.server.run()

    def close(self) -> None:
        self.server.close()
