"""The composition root: the only place in gateway/ that builds adapters and wires them.

Adapters are imported where they are built, so that a command pays only for what it uses:
`validate` loads lxml, not Flask, requests and stomp.py (a third of a second of start-up).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from adapters.smile_xml import SmileXmlCodec
from gateway.batch import Checker
from gateway.config import POSTGRES_SCHEMES, Settings, endpoint_text
from gateway.domain import SubscriptionProvisionResponse
from gateway.errors import UsageError
from gateway.ports import BROKER, FORWARD, Forwarder, InMemoryRequestIds, Publisher, RequestIds
from gateway.retention import Pruner
from gateway.translator import Translator

if TYPE_CHECKING:
    from adapters.http_server import WaitressServer
    from adapters.sql_base import SqlStoreBase
    from adapters.sql_store import Backup, Restored
    from adapters.stomp_broker import StompConsumer
    from gateway.relay import BrokerRelay, ForwardRelay
    from gateway.service import GatewayService


def build_codec(settings: Settings) -> SmileXmlCodec:
    return SmileXmlCodec(settings.schema.path, settings.schema.max_bytes)


def _checker(schema_path: Path, max_bytes: int) -> Checker:
    return Checker(SmileXmlCodec(schema_path, max_bytes), max_bytes,
                   lambda: sys.stdin.buffer.read(max_bytes + 1))


def checker_factory(settings: Settings) -> partial[Checker]:
    """A picklable factory, so that each validate worker process builds its own codec."""
    return partial(_checker, settings.schema.path, settings.schema.max_bytes)


def build_translator(settings: Settings, request_ids: RequestIds | None = None) -> Translator:
    return Translator(settings.mapping, build_codec(settings),
                      request_ids if request_ids is not None else InMemoryRequestIds())


def build_store(settings: Settings) -> SqlStoreBase:
    """SQLite for `sqlite:///PATH`, PostgreSQL for `postgresql://...` (several gateways)."""
    if settings.store.url.startswith(POSTGRES_SCHEMES):
        from adapters.pg_store import PgStore

        return PgStore(settings.store.url)
    from adapters.sql_store import SqlStore

    return SqlStore(settings.store.url)


def backup_store(settings: Settings, dest: str) -> Backup:
    """A consistent copy of the SQLite store in the file `dest` (PostgreSQL has pg_dump)."""
    if settings.store.url.startswith(POSTGRES_SCHEMES):
        raise UsageError("backup copies a SQLite store; back up a PostgreSQL store with "
                         "pg_dump (a consistent snapshot while the gateways run)")
    from adapters.sql_store import backup

    return backup(settings.store.url, dest)


def store_advisories(settings: Settings) -> list[str]:
    """What is at risk in where the store lies (a SQLite file on a network filesystem), for
    `serve` and `check-config` to say beside the configuration's own advisories."""
    if settings.store.url.startswith(POSTGRES_SCHEMES):
        return []
    from adapters.sql_store import store_advisories as sqlite_advisories

    return sqlite_advisories(settings.store.url)


def restore_store(settings: Settings, source: str) -> Restored:
    """The backup `source` put in place as the SQLite store, the store before it kept."""
    if settings.store.url.startswith(POSTGRES_SCHEMES):
        raise UsageError("restore puts back a SQLite store; restore a PostgreSQL store with "
                         "pg_restore or psql from its pg_dump")
    from adapters.sql_store import restore

    return restore(settings.store.url, source)


def _default_forwarder(settings: Settings) -> Forwarder:
    from adapters.http_forwarder import RequestsForwarder

    return RequestsForwarder(settings.forward)


@dataclass
class Runtime:
    """Everything one gateway process runs, wired."""

    settings: Settings
    service: GatewayService
    store: SqlStoreBase
    broker_relay: BrokerRelay
    forward_relay: ForwardRelay | None
    consumer: StompConsumer | None
    pruner: Pruner
    extras: dict[str, object] = field(default_factory=dict)

    def close(self) -> None:
        self.broker_relay.publisher.close()
        self.store.close()


def bootstrap(settings: Settings, publisher: Publisher | None = None,
              forwarder: Forwarder | None = None) -> Runtime:
    """Build the gateway: store, codec, translator, service, relays, consumer."""
    from adapters.stomp_broker import StompConsumer, StompPublisher
    from gateway.relay import BrokerRelay, ForwardRelay
    from gateway.service import GatewayService

    codec = build_codec(settings)
    store = build_store(settings)
    translator = Translator(settings.mapping, codec, InMemoryRequestIds())
    wakers: dict[str, BrokerRelay | ForwardRelay] = {}

    def notify(channel: str) -> None:
        relay = wakers.get(channel)
        if relay is not None:
            relay.wake.set()

    service = GatewayService(settings, codec, store, translator, notify)
    broker_relay = BrokerRelay(store, publisher or StompPublisher(settings.broker),
                               settings.emission, settings.broker)
    wakers[BROKER] = broker_relay
    forward_relay = None
    if settings.forward.url:
        forward_relay = ForwardRelay(store, forwarder or _default_forwarder(settings),
                                     settings.forward)
        wakers[FORWARD] = forward_relay
    consumer = None
    if settings.inbound.enabled:
        consumer = StompConsumer(
            settings.broker, settings.inbound, service.consume,
            lambda headers, body, reason: service.dead_letter("broker", reason, headers, body))
    return Runtime(settings, service, store, broker_relay, forward_relay, consumer,
                   Pruner(store, settings.store.retention_days))


def ready_checks(runtime: Runtime) -> dict[str, Callable[[], None]]:
    """What /readyz checks: the store, the schema, and the broker when emission is on."""
    settings = runtime.settings
    codec = build_codec(settings)
    sample = codec.encode(SubscriptionProvisionResponse(1, "Provisioned"))

    def schema() -> None:
        if codec.check(sample):
            raise RuntimeError("the schema rejects a known-good document")

    checks: dict[str, Callable[[], None]] = {"store": runtime.store.ping, "schema": schema}
    if settings.emission.enabled or settings.inbound.enabled:
        def broker() -> None:
            # what the relay or the consumer last met, if connecting failed: a port that
            # takes TCP connections is not yet a broker that answers
            failures = [runtime.broker_relay.last_failure if settings.emission.enabled
                        else None, runtime.consumer.last_failure if runtime.consumer else None]
            for failure in filter(None, failures):
                raise RuntimeError(failure)
            refused = []
            for host, port in settings.broker.endpoints:  # any one listed that listens
                try:
                    with socket.create_connection((host, port), timeout=1.0):
                        return
                except OSError as exc:
                    refused.append(f"{endpoint_text(host, port)}: {exc.strerror or exc}")
            raise RuntimeError("cannot connect to " + "; ".join(refused))

        checks["broker"] = broker
    return checks


def build_http_server(runtime: Runtime,
                      checks: dict[str, Callable[[], None]] | None = None) -> WaitressServer:
    from adapters.http_server import WaitressServer
    from adapters.webhook import create_app

    consumer = runtime.consumer
    app = create_app(runtime.service, runtime.settings, checks,
                     broker_outcomes=consumer.outcomes.copy if consumer else None)
    return WaitressServer(app, runtime.settings.webhook)
