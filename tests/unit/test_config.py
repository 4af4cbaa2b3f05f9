"""load_settings: defaults, files, environment overrides and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_settings, redact_url
from gateway.errors import ConfigError
from gateway.signatures import secret_keys
from tests.conftest import ROOT, XSD


def test_the_embedded_defaults_are_the_shipped_config_yaml() -> None:
    assert (ROOT / "gateway" / "defaults.yaml").resolve() == (ROOT / "config.yaml").resolve()


def test_defaults_are_sqlite_with_emission_off(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no config.yaml here: the built-ins alone
    s = load_settings(None, {})
    assert s.store.url == "sqlite:///var/gateway.db"
    assert s.emission.enabled is False and s.inbound.enabled is False
    assert s.schema.path == XSD
    assert (s.webhook.host, s.webhook.port, s.webhook.max_body_bytes) == ("127.0.0.1", 8080, 1 << 20)


def test_environment_overrides_any_key_with_json_values() -> None:
    s = load_settings(None, {"GATEWAY_BROKER__PORT": "61614",
                             "GATEWAY_EMISSION__ENABLED": "true",
                             "GATEWAY_EMISSION__DESTINATION": "/topic/Smile",
                             "GATEWAY_EMISSION__MESSAGE_TYPES__SUBSCRIPTIONCLOSED": "false",
                             "GATEWAY_BROKER__PASSWORD": "s3cret"})
    assert s.broker.port == 61614 and s.broker.password == "s3cret"
    assert s.emission.sends("SubscriptionProvisioned")
    assert not s.emission.sends("SubscriptionClosed")
    assert s.emission.destination == "/topic/Smile"


def test_failover_brokers_are_tried_after_the_first(tmp_path: Path) -> None:
    assert load_settings(None, {}).broker.endpoints == (("127.0.0.1", 61613),)
    cfg = tmp_path / "site.yaml"
    cfg.write_text("broker:\n  host: b1\n  failover: ['b2:61613', '[::1]:61614', "
                   "'B1:61614']\n")
    assert load_settings(cfg, {}).broker.endpoints == (
        ("b1", 61613), ("b2", 61613), ("::1", 61614), ("B1", 61614))
    # from the environment: a JSON list, or the same comma-separated
    for value in ('["b2:61613", "b3:61615"]', "b2:61613, b3:61615"):
        s = load_settings(None, {"GATEWAY_BROKER__FAILOVER": value})
        assert s.broker.endpoints[1:] == (("b2", 61613), ("b3", 61615))
    assert load_settings(None, {"GATEWAY_BROKER__FAILOVER": ""}).broker.failover == ()


def test_a_file_only_needs_the_keys_it_changes(tmp_path: Path) -> None:
    cfg = tmp_path / "site.yaml"
    cfg.write_text("store:\n  url: sqlite:////tmp/x.db\nbroker:\n  port: 61999\n")
    s = load_settings(cfg, {})
    assert s.store.url == "sqlite:////tmp/x.db" and s.broker.port == 61999
    assert s.broker.host == "127.0.0.1"


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "site.yaml"
    cfg.write_text("webhook:\n  port: 9999\n")
    assert load_settings(None, {"GATEWAY_CONFIG": str(cfg)}).webhook.port == 9999


@pytest.mark.parametrize(("text", "key", "words"), [
    ("brokr:\n  host: x\n", "brokr", "unknown section"),
    ("broker:\n  hots: x\n", "broker.hots", "unknown key"),
    ("broker:\n  port: many\n", "broker.port", "expected an integer"),
    ("emission:\n  enabled: maybe\n", "emission.enabled", "expected true or false"),
    ("emission:\n  message_types:\n    SubscriptionFoo: true\n",
     "emission.message_types.SubscriptionFoo", "unknown message type"),
    ("emission:\n  destination: SmileSubscription\n", "emission.destination", "not a STOMP"),
    ("inbound:\n  destination: /queue/\n", "inbound.destination",
     "'/queue/' is not a STOMP destination"),
    ("inbound:\n  destination: /amq/queue/\n", "inbound.destination",
     "'/amq/queue/' is not a STOMP destination"),
    ("emission:\n  destination: /amq/topic/x\n", "emission.destination",
     "'/amq/topic/x' is not a STOMP destination"),
    ("inbound:\n  dead_letter_destination: '/topic/ '\n", "inbound.dead_letter_destination",
     "'/topic/ ' is not a STOMP destination"),
    ("webhook:\n  secret: whsec_abc\n", "webhook.secret", "environment only"),
    ("webhook:\n  read_token: abc\n", "webhook.read_token", "environment only"),
    ("broker:\n  password: pw\n", "broker.password", "GATEWAY_BROKER__PASSWORD"),
    ("store:\n  url: mysql://x\n", "store.url", "unsupported store"),
    ("store:\n  url: 'sqlite:///'\n", "store.url", "'sqlite:///' names no file"),
    ("store:\n  url: 'sqlite:///:memory:'\n", "store.url",
     "'sqlite:///:memory:' names no file: SQLite would keep the store in memory"),
    ("store:\n  url: postgresql://gw:pw@db/gw\n", "store.url", "PGPASSWORD"),
    ("store:\n  url: postgresql://gw@[::1/gw\n", "store.url",
     "'postgresql://gw@[::1/gw' is not a URL: Invalid IPv6 URL"),
    ("store:\n  url: postgresql://gw@db:5432x/gw\n", "store.url", "is not a URL: Port could not"),
    ("schema:\n  path: nowhere.xsd\n", "schema.path", "no schema file"),
    ("logging:\n  level: LOUD\n", "logging.level", "unknown level"),
    ("broker: [1, 2\n", "", "not valid YAML at line"),
    ("forward:\n  attempts: 3\n  attempts: 4\n", "",
     "at line 3, column 3: 'attempts' is given twice"),
    ("forward:\n  url: x\nforward:\n  attempts: 4\n", "", "'forward' is given twice"),
    ("forward:\n  concurrency: 0\n", "forward.concurrency", "must be from 1 to 256, found 0"),
    ("webhook:\n  threads: -2\n", "webhook.threads", "must be from 1 to 1024, found -2"),
    ("forward:\n  attempts: 0\n", "forward.attempts", "must be from 1 to 1000, found 0"),
    ("schema:\n  max_bytes: 0\n", "schema.max_bytes", "must be from 1 to 268435456, found 0"),
    ("webhook:\n  tolerance_s: -5\n", "webhook.tolerance_s", "must be at least 1, found -5"),
    ("webhook:\n  port: 99999\n", "webhook.port", "must be from 0 to 65535, found 99999"),
    ("broker:\n  port: 0\n", "broker.port", "must be from 1 to 65535, found 0"),
    ("broker:\n  heartbeat_ms: -1\n", "broker.heartbeat_ms", "must be from 0 to 86400000, found -1"),
    ("broker:\n  receipt_timeout_s: 0\n", "broker.receipt_timeout_s",
     "must be from 0.001 to 86400, found 0.0"),
    ("broker:\n  receipt_timeout_s: .inf\n", "broker.receipt_timeout_s",
     "expected a number, found inf"),
    ("forward:\n  backoff_s: -1\n", "forward.backoff_s", "must be from 0 to 86400, found -1.0"),
    ("broker:\n  host: ' '\n", "broker.host", "must not be empty"),
    ("webhook:\n  host: ''\n", "webhook.host", "must not be empty"),
    ("inbound:\n  dead_letter_destination: dead\n", "inbound.dead_letter_destination",
     "'dead' is not a STOMP destination"),
    ("forward:\n  url: localhost:9000/events\n", "forward.url",
     "'localhost:9000/events' is not an http(s) URL with a host"),
    ("forward:\n  url: 'http:///events'\n", "forward.url", "is not an http(s) URL with a host"),
    ("store:\n  retention_days: -1\n", "store.retention_days", "must be from 0 to 36500, found -1"),
    # upper bounds: a wait past the platform's timers, threads or sizes no process holds
    ("webhook:\n  threads: 100000\n", "webhook.threads", "must be from 1 to 1024, found 100000"),
    ("forward:\n  timeout_s: 1.0e+10\n", "forward.timeout_s",
     "must be from 0.001 to 86400, found 10000000000.0"),
    ("broker:\n  reconnect_max_s: 90000\n", "broker.reconnect_max_s",
     "must be from 0.001 to 86400, found 90000"),
    ("broker:\n  max_in_flight: 100000000000000000000\n", "broker.max_in_flight",
     "must be from 1 to 65536, found 100000000000000000000"),
    ("emission:\n  max_attempts: 1001\n", "emission.max_attempts",
     "must be from 1 to 1000, found 1001"),
    ("webhook:\n  max_body_bytes: 1073741824\n", "webhook.max_body_bytes",
     "must be from 1 to 268435456, found 1073741824"),
    ("store:\n  retention_days: 1.0e+300\n", "store.retention_days",
     "must be from 0 to 36500, found 1e+300"),
    ("forward:\n  url: 'http://[::1/events'\n", "forward.url",
     "'http://[::1/events' is not a URL: Invalid IPv6 URL"),
    ("forward:\n  url: 'http://orders:99999/events'\n", "forward.url",
     "is not a URL: Port out of range 0-65535"),
    ("webhook:\n  tmf622_usn_path: event..externalId\n", "webhook.tmf622_usn_path",
     "'event..externalId' is not a dotted path of JSON member names"),
    ("broker:\n  failover: [b2]\n", "broker.failover",
     "'b2' is not HOST:PORT"),
    ("broker:\n  failover: ['b2:0']\n", "broker.failover", "'b2:0': the port must be from 1"),
    ("broker:\n  failover: ['b2:stomp']\n", "broker.failover", "'b2:stomp' is not HOST:PORT"),
    ("broker:\n  failover: [':61613']\n", "broker.failover", "':61613' is not HOST:PORT"),
    ("broker:\n  failover: ['[::1:61613']\n", "broker.failover", "is not HOST:PORT"),
    ("broker:\n  failover: [61613]\n", "broker.failover", "expected a list of HOST:PORT"),
    ("broker:\n  failover: {b2: 61613}\n", "broker.failover", "expected a list of HOST:PORT"),
    ("broker:\n  failover: ['127.0.0.1:61613']\n", "broker.failover",
     "'127.0.0.1:61613' is broker.host:broker.port itself"),
    ("broker:\n  failover: ['b2:61613', 'b2:61613']\n", "broker.failover",
     "'b2:61613' is listed twice"),
    ("webhook:\n  trusted_proxy: proxy.example.net\n", "webhook.trusted_proxy",
     "'proxy.example.net' is not an IP address (the proxy's, as the gateway sees it)"),
    ("webhook:\n  trusted_proxy: 10.0.0.0/8\n", "webhook.trusted_proxy", "not an IP address"),
])
def test_bad_configuration_names_the_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(cfg, {})
    assert str(caught.value).startswith(key or str(cfg))
    assert words in str(caught.value)


def test_aliases_that_expand_a_billion_fold_are_refused_at_once(tmp_path: Path) -> None:
    # nine lines of aliases to aliases: 10 ** 9 strings, which took minutes and gigabytes
    lines = ["mapping:", "  response_statuses:", "    - &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"    - &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 9)]
    cfg = tmp_path / "laughs.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="expands to more than 100000 values"):
        load_settings(cfg, {})
    few = tmp_path / "few.yaml"  # an alias or two is YAML as usual
    few.write_text("emission:\n  message_types: &off {SubscriptionClosed: false}\n"
                   "broker:\n  host: &h 127.0.0.1\nwebhook:\n  host: *h\n")
    assert load_settings(few, {}).webhook.host == "127.0.0.1"


def test_the_bounds_themselves_are_accepted(tmp_path: Path) -> None:
    cfg = tmp_path / "edge.yaml"
    cfg.write_text("webhook:\n  port: 0\nbroker:\n  port: 65535\n  heartbeat_ms: 0\n"
                   "forward:\n  url: https://orders.example/events\n  backoff_s: 0\n"
                   "inbound:\n  dead_letter_destination: /queue/Smile.DLQ\n")
    s = load_settings(cfg, {})
    assert (s.webhook.port, s.broker.port, s.broker.heartbeat_ms) == (0, 65535, 0)
    assert s.forward.url == "https://orders.example/events"


def test_a_queue_declared_beforehand_on_rabbitmq_is_a_destination_to_consume(
        tmp_path: Path) -> None:
    """RabbitMQ's /amq/queue/NAME: a queue that exists (declared with its own arguments, such
    as x-single-active-consumer), which a SUBSCRIBE to /queue/NAME would declare again without
    them and be refused. To consume only: RabbitMQ confirms a SEND to one that does not exist
    and drops the message."""
    cfg = tmp_path / "rabbit.yaml"
    cfg.write_text("inbound:\n  destination: /amq/queue/smile.in\n")
    assert load_settings(cfg, {}).inbound.destination == "/amq/queue/smile.in"
    for key, text in (("emission.destination", "emission:\n  destination: /amq/queue/out\n"),
                      ("inbound.dead_letter_destination",
                       "inbound:\n  dead_letter_destination: /amq/queue/dlq\n")):
        cfg.write_text(text)
        with pytest.raises(ConfigError) as refused:
            load_settings(cfg, {})
        assert refused.value.key == key
        assert "only inbound.destination takes: RabbitMQ confirms a SEND to one that does " \
            "not exist and drops the message" in str(refused.value)


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml", {})


def test_a_file_that_is_not_utf8_names_where(tmp_path: Path) -> None:
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes(b"store:\n  url: sqlite:///caf\xe9.db\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 at line 2, column 21 \(byte 0xe9\)"):
        load_settings(cfg, {})


def test_an_endless_file_is_refused_not_read_forever() -> None:
    with pytest.raises(ConfigError, match="over 4194304 bytes: not a configuration file"):
        load_settings(Path("/dev/zero"), {})


def test_a_store_url_from_the_environment_may_hold_a_password_never_shown() -> None:
    url = "postgresql://gw:s3cret@db.example:5433/gateway?sslmode=require"
    assert load_settings(None, {"GATEWAY_STORE__URL": url}).store.url == url
    assert redact_url(url) == "postgresql://gw:***@db.example:5433/gateway?sslmode=require"
    assert redact_url("sqlite:///var/gateway.db") == "sqlite:///var/gateway.db"


@pytest.mark.parametrize("url, shown", [
    ("postgresql://gw:s3cret@[::1/gateway", "postgresql://gw:***@[::1/gateway"),
    ("postgresql://gw:s3cret@db:port/gateway", "postgresql://gw:***@db:port/gateway")])
def test_a_store_url_that_does_not_parse_is_refused_without_its_password(url, shown) -> None:
    assert redact_url(url) == shown
    with pytest.raises(ConfigError, match="is not a URL") as info:
        load_settings(None, {"GATEWAY_STORE__URL": url})
    assert "s3cret" not in str(info.value) and shown in str(info.value)


@pytest.mark.parametrize(("name", "meant"), [
    ("GATEWAY_WEBHOOK_SECRET", "GATEWAY_WEBHOOK__SECRET"),
    ("GATEWAY_broker_password", "GATEWAY_BROKER__PASSWORD"),
    ("GATEWAY_FORWARD_URL", "GATEWAY_FORWARD__URL"),
    ("GATEWAY_EMISSION", "GATEWAY_EMISSION__<KEY>"),
])
def test_an_override_with_one_underscore_after_its_section_is_an_error(name, meant) -> None:
    # silently ignored, GATEWAY_WEBHOOK_SECRET would leave the webhook unsigned
    with pytest.raises(ConfigError) as err:
        load_settings(None, {name: "whsec_c2VjcmV0"})
    assert err.value.key == name
    assert meant in err.value.problem and "two underscores" in err.value.problem


def test_other_gateway_variables_are_not_overrides() -> None:
    # the CGI's GATEWAY_INTERFACE and this gateway's GATEWAY_CONFIG name no section
    s = load_settings(None, {"GATEWAY_INTERFACE": "CGI/1.1", "GATEWAY_WEBHOOKS": "x"})
    assert s.webhook.secret == ""


@pytest.mark.parametrize("name", ["GATEWAY_WEBHOOK__", "GATEWAY_WEBHOOK____SECRET", "GATEWAY___X"])
def test_an_override_with_an_empty_part_is_named(name) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, {name: "1"})
    assert err.value.key == name and "empty" in err.value.problem


def test_broker_tls_files_are_checked_at_start(tmp_path: Path) -> None:
    from tests.brokers import make_certificate

    cert, key = make_certificate(tmp_path, "broker", ["localhost"])
    ok = load_settings(None, {"GATEWAY_BROKER__TLS": "true",
                              "GATEWAY_BROKER__TLS_CA_FILE": str(cert),
                              "GATEWAY_BROKER__TLS_CERT_FILE": str(cert),
                              "GATEWAY_BROKER__TLS_KEY_FILE": str(key)}).broker
    assert ok.tls and ok.tls_ca_file == str(cert)
    assert load_settings(None, {"GATEWAY_BROKER__TLS": "true"}).broker.tls_ca_file == ""
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    for env, key_name, words in [
        ({"GATEWAY_BROKER__TLS_CA_FILE": str(cert)}, "broker.tls_ca_file",
         "given while broker.tls is false"),
        ({"GATEWAY_BROKER__TLS": "true", "GATEWAY_BROKER__TLS_CA_FILE": str(tmp_path / "no")},
         "broker.tls_ca_file", "no file at"),
        ({"GATEWAY_BROKER__TLS": "true", "GATEWAY_BROKER__TLS_CA_FILE": str(junk)},
         "broker.tls_ca_file", "cannot load"),
        ({"GATEWAY_BROKER__TLS": "true", "GATEWAY_BROKER__TLS_KEY_FILE": str(key)},
         "broker.tls_key_file", "a key without broker.tls_cert_file"),
        ({"GATEWAY_BROKER__TLS": "true", "GATEWAY_BROKER__TLS_CERT_FILE": str(cert)},
         "broker.tls_cert_file", "cannot load the client certificate"),  # no key in it
        ({"GATEWAY_BROKER__TLS": "true", "GATEWAY_BROKER__TLS_CERT_FILE": str(cert),
          "GATEWAY_BROKER__TLS_KEY_FILE": str(junk)}, "broker.tls_key_file", "cannot load"),
    ]:
        with pytest.raises(ConfigError) as caught:
            load_settings(None, env)
        assert str(caught.value).startswith(key_name) and words in str(caught.value), env


def test_forward_tls_files_are_checked_at_start(tmp_path: Path) -> None:
    from tests.brokers import make_certificate

    cert, key = make_certificate(tmp_path, "orders", ["orders.example"])
    https = {"GATEWAY_FORWARD__URL": "https://orders.example/events"}
    ok = load_settings(None, {**https, "GATEWAY_FORWARD__CA_FILE": str(cert),
                              "GATEWAY_FORWARD__CERT_FILE": str(cert),
                              "GATEWAY_FORWARD__KEY_FILE": str(key)}).forward
    assert ok.ca_file == str(cert) and ok.key_file == str(key)
    for env, key_name, words in [
        ({"GATEWAY_FORWARD__URL": "http://orders.example/events",
          "GATEWAY_FORWARD__CA_FILE": str(cert)}, "forward.ca_file",
         "given while forward.url is not https://"),
        ({"GATEWAY_FORWARD__CERT_FILE": str(cert)}, "forward.cert_file", "given while"),
        ({**https, "GATEWAY_FORWARD__CA_FILE": str(tmp_path / "no.pem")}, "forward.ca_file",
         "no file at"),
        ({**https, "GATEWAY_FORWARD__KEY_FILE": str(key)}, "forward.key_file",
         "a key without forward.cert_file"),
        ({**https, "GATEWAY_FORWARD__CA_FILE": str(key)}, "forward.ca_file", "cannot load"),
    ]:
        with pytest.raises(ConfigError) as caught:
            load_settings(None, env)
        assert str(caught.value).startswith(key_name) and words in str(caught.value), env


@pytest.mark.parametrize(("secret", "words"), [
    ("whsec_c2VjcmV0 whsec_!!", "the 2nd secret: the part after whsec_ is not base64"),
    ("whsec_c2VjcmV0 c2VjcmV0", "the 2nd secret: must be written whsec_<base64>"),
    ("   ", "must be written whsec_<base64>"),
])
def test_each_of_several_webhook_secrets_is_checked(secret: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, {"GATEWAY_WEBHOOK__SECRET": secret})
    assert err.value.key == "webhook.secret" and words in err.value.problem, err.value.problem


def test_two_webhook_secrets_are_taken_while_one_replaces_the_other() -> None:
    s = load_settings(None, {"GATEWAY_WEBHOOK__SECRET": " whsec_bmV3 \t whsec_b2xk "})
    assert secret_keys(s.webhook.secret) == (b"new", b"old")


def test_a_secret_can_be_read_from_the_file_a_variable_names(tmp_path: Path) -> None:
    """GATEWAY_<SECTION>__<KEY>_FILE, for the secrets only: systemd's LoadCredential=, a
    Kubernetes or Docker secret mounted as a file. The value is the file's text as it is (a
    string, never read as JSON), less the line break an editor or `echo` leaves at the end."""
    (tmp_path / "secret").write_text("whsec_bmV3 whsec_b2xk\n")
    (tmp_path / "password").write_text("12345\r\n")
    (tmp_path / "token").write_text("  tok en \n\n")
    s = load_settings(None, {"GATEWAY_WEBHOOK__SECRET_FILE": str(tmp_path / "secret"),
                             "GATEWAY_BROKER__PASSWORD_FILE": str(tmp_path / "password"),
                             "GATEWAY_FORWARD__TOKEN_FILE": str(tmp_path / "token"),
                             "GATEWAY_WEBHOOK__READ_TOKEN": "plain"})
    assert secret_keys(s.webhook.secret) == (b"new", b"old")
    assert s.broker.password == "12345"  # a string, though it would parse as JSON
    assert s.forward.token == "  tok en "
    assert s.webhook.read_token == "plain"
    assert s.secret_files == {"webhook.secret": str(tmp_path / "secret"),
                              "broker.password": str(tmp_path / "password"),
                              "forward.token": str(tmp_path / "token")}


@pytest.mark.parametrize(("setup", "name", "words"), [
    ("missing", "GATEWAY_WEBHOOK__SECRET_FILE", "cannot read {path}: No such file"),
    ("folder", "GATEWAY_WEBHOOK__SECRET_FILE", "cannot read {path}: Is a directory"),
    ("empty", "GATEWAY_WEBHOOK__SECRET_FILE", "{path} is empty"),
    ("blank", "GATEWAY_WEBHOOK__SECRET_FILE", "{path} is empty"),
    ("huge", "GATEWAY_WEBHOOK__SECRET_FILE", "{path} holds more than 65,536 bytes: not a secret"),
    ("binary", "GATEWAY_WEBHOOK__SECRET_FILE", "{path} is not UTF-8 text"),
    ("both", "GATEWAY_WEBHOOK__SECRET_FILE",
     "GATEWAY_WEBHOOK__SECRET is set too: give the secret one way"),
])
def test_a_secret_file_that_cannot_be_used_is_named(tmp_path: Path, setup: str, name: str,
                                                    words: str) -> None:
    path = tmp_path / "secret"
    environ = {name: str(path)}
    if setup == "folder":
        path.mkdir()
    elif setup == "empty":
        path.write_text("")
    elif setup == "blank":
        path.write_text("\n")
    elif setup == "huge":
        path.write_text("x" * 70_000)
    elif setup == "binary":
        path.write_bytes(b"whsec_\xff\xfe")
    elif setup == "both":
        path.write_text("whsec_bmV3\n")
        environ["GATEWAY_WEBHOOK__SECRET"] = "whsec_b2xk"
    with pytest.raises(ConfigError) as err:
        load_settings(None, environ)
    assert err.value.key == name
    assert words.format(path=path) in err.value.problem, err.value.problem


def test_a_secret_read_from_a_file_is_checked_as_any_other(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("not-a-webhook-secret\n")
    with pytest.raises(ConfigError) as err:
        load_settings(None, {"GATEWAY_WEBHOOK__SECRET_FILE": str(tmp_path / "secret")})
    assert err.value.key == "webhook.secret" and "whsec_" in err.value.problem


def test_only_the_secrets_are_read_from_files() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, {"GATEWAY_BROKER__HOST_FILE": "/etc/hostname"})
    assert err.value.key == "GATEWAY_BROKER__HOST_FILE"
    assert err.value.problem.startswith("only the secrets are read from a file: "
                                        "GATEWAY_BROKER__PASSWORD_FILE, "), err.value.problem
    assert "set GATEWAY_BROKER__HOST to the value" in err.value.problem


def test_settings_that_work_but_put_something_at_risk_are_advised_against() -> None:
    from gateway.config import advisories

    assert advisories(load_settings(None, {})) == []  # the embedded defaults
    exposed = advisories(load_settings(None, {"GATEWAY_WEBHOOK__HOST": "0.0.0.0"}))
    assert exposed == ["webhook.host 0.0.0.0 takes requests from other machines and "
                       "webhook.secret is unset: anyone who reaches the port can post "
                       "documents and events"]
    assert advisories(load_settings(None, {"GATEWAY_WEBHOOK__HOST": "::1"})) == []
    short = advisories(load_settings(None, {"GATEWAY_STORE__RETENTION_DAYS": "0.5"}))
    assert short == ["store.retention_days 0.5 deletes a delivery's dedupe key before a "
                     "Standard Webhooks sender stops retrying it (its schedule spans about 28 "
                     "hours): a retry after that is recorded again; keep 2 days or more"]
    assert advisories(load_settings(None, {"GATEWAY_STORE__RETENTION_DAYS": "0"})) == []
    token = {"GATEWAY_FORWARD__TOKEN": "t0ken"}
    clear = advisories(load_settings(None, {**token,
                                            "GATEWAY_FORWARD__URL": "http://orders.lan/ev"}))
    assert clear == ["forward.token goes to http://orders.lan/ev in clear text: an https "
                     "forward.url keeps it from the network"]
    for url in ("https://orders.lan/ev", "http://127.0.0.1:9000/ev", "http://localhost/ev"):
        assert advisories(load_settings(None, {**token, "GATEWAY_FORWARD__URL": url})) == []
    password = {"GATEWAY_BROKER__PASSWORD": "pw", "GATEWAY_INBOUND__ENABLED": "true",
                "GATEWAY_BROKER__HOST": "127.0.0.1", "GATEWAY_BROKER__FAILOVER": "mq2.lan:61613"}
    assert advisories(load_settings(None, password)) == [
        "broker.password goes to mq2.lan:61613 in clear text: broker.tls with the broker's "
        "stomp+ssl port keeps it from the network"]
    assert advisories(load_settings(None, {**password, "GATEWAY_BROKER__TLS": "true"})) == []
    quiet = {**password, "GATEWAY_INBOUND__ENABLED": "false"}  # no broker is used
    assert advisories(load_settings(None, quiet)) == []
