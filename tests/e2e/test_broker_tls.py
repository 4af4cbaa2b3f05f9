"""STOMP over TLS against ActiveMQ's own stomp+ssl connector (a broker of its own, started by
scripts/activemq.sh with a PKCS12 keystore made from an openssl certificate)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.config import Settings
from tests.brokers import (
    ACTIVEMQ,
    BrokerInstance,
    make_certificate,
    port_open,
    require_broker,
    unique_queue,
    wait_until,
)
from tests.on_broker import make_service, publish_and_consume, publish_refused

pytestmark = pytest.mark.broker
TLS_STOMP, TLS_OPENWIRE, TLS_SSL = 61653, 61656, 61654


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory) -> Iterator[tuple[BrokerInstance, Path]]:
    """ActiveMQ with a stomp+ssl listener whose certificate names localhost; yields it and
    the certificate, which is its own CA."""
    require_broker()  # the project's broker is installed and runs: this one can start too
    if port_open(TLS_STOMP) or port_open(TLS_SSL):
        pytest.fail(f"port {TLS_STOMP} or {TLS_SSL} is taken: a broker left from a crashed run?")
    folder = tmp_path_factory.mktemp("tls-broker")
    cert, key = make_certificate(folder, "broker", ["localhost", "127.0.0.1"])
    keystore = folder / "broker.p12"
    subprocess.run(["openssl", "pkcs12", "-export", "-in", str(cert), "-inkey", str(key),
                    "-out", str(keystore), "-passout", "pass:changeit"],
                   check=True, capture_output=True, timeout=60)
    broker = BrokerInstance(folder / "activemq", TLS_STOMP, TLS_OPENWIRE,
                            STOMP_SSL_PORT=str(TLS_SSL), SSL_KEYSTORE=str(keystore))
    broker.start()
    wait_until(lambda: port_open(TLS_SSL), 60, what="the stomp+ssl port")
    yield broker, cert
    broker.stop()


def tls_settings(settings: Settings, queue: str, ca: Path) -> Settings:
    return replace(settings,
                   broker=replace(settings.broker, host="localhost", port=TLS_SSL, tls=True,
                                  tls_ca_file=str(ca), receipt_timeout_s=5.0,
                                  reconnect_initial_s=0.2, reconnect_max_s=1.0),
                   emission=replace(settings.emission, enabled=True, destination=queue),
                   inbound=replace(settings.inbound, enabled=True, destination=queue))


def test_the_relay_and_the_consumer_speak_tls_to_activemqs_stomp_ssl_connector(
        settings, codec, tmp_path, tls_broker) -> None:
    _, cert = tls_broker
    queue = unique_queue("tls-amq")
    s = tls_settings(settings, queue, cert)
    # published and consumed over TLS, read and sent by the test on the plain listener
    publish_and_consume(s, make_service(s, codec, tmp_path), queue,
                        replace(ACTIVEMQ, port=TLS_STOMP))


def test_activemqs_certificate_not_trusted_is_named(settings, tmp_path, tls_broker) -> None:
    other, _ = make_certificate(tmp_path, "other", ["localhost"])
    s = tls_settings(settings, "/queue/x", other)
    assert publish_refused(s.broker) == (f"cannot connect to localhost:{TLS_SSL}: TLS: "
                                 "CERTIFICATE_VERIFY_FAILED (self-signed certificate)")
