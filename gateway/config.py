"""Settings and `load_settings(path, environ)`: the configuration, loaded once and checked (pure).

The built-in defaults are the project's config.yaml (gateway/defaults.yaml links to it). A
deployment's file is merged over them, then `GATEWAY_<SECTION>__<KEY>` environment variables
over that. Secrets come from the environment only: its variables, or files they name
(`GATEWAY_<SECTION>__<KEY>_FILE`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_type_hints
from urllib.parse import urlsplit, urlunsplit

import yaml

from gateway.domain import MESSAGE_TYPES
from gateway.errors import ConfigError
from gateway.mapping import StateMapping, load_mapping
from gateway.signatures import secret_keys

# libyaml's loader when PyYAML was built with it: 4x faster start-up for every command.
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _YamlLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """The safe loader, refusing a key given twice in one mapping (YAML keeps the last one
    silently: an operator's second `attempts:` would quietly win over the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base constructor says so
                break
            if repeated:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice in this mapping", key_node.start_mark)
        return super().construct_mapping(node, deep)  # type: ignore[no-any-return]


DEFAULTS_PATH = Path(__file__).with_name("defaults.yaml")
ENV_PREFIX = "GATEWAY_"
CONFIG_ENV = "GATEWAY_CONFIG"
SECRETS = {("broker", "password"), ("webhook", "secret"), ("webhook", "read_token"),
           ("forward", "token")}
FILE_SUFFIX = "_FILE"
# far above any key or password: a path to a log by mistake is refused, not read whole
_SECRET_FILE_MAX_BYTES = 1 << 16


@dataclass(frozen=True, slots=True)
class SchemaSettings:
    path: Path
    max_bytes: int


@dataclass(frozen=True, slots=True)
class StoreSettings:
    url: str
    retention_days: float


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    host: str
    port: int
    vhost: str
    user: str
    heartbeat_ms: int
    receipt_timeout_s: float
    max_in_flight: int
    reconnect_initial_s: float
    reconnect_max_s: float
    password: str = ""
    # brokers tried in turn after host:port when it cannot be reached (a standby, a cluster)
    failover: tuple[tuple[str, int], ...] = ()
    # STOMP over TLS (a broker's stomp+ssl connector): the broker's certificate checked
    # against tls_ca_file ("" = the system's CAs) and its host name; a client certificate
    # (mutual TLS) from tls_cert_file, its key in tls_key_file ("" = in the same file)
    tls: bool = False
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""

    @property
    def endpoints(self) -> tuple[tuple[str, int], ...]:
        """Where to connect, in the order to try: host:port, then the failover ones."""
        return ((self.host, self.port), *self.failover)


@dataclass(frozen=True, slots=True)
class EmissionSettings:
    enabled: bool
    destination: str
    origin: str
    max_attempts: int
    message_types: dict[str, bool]

    def sends(self, message_type: str) -> bool:
        return self.enabled and self.message_types.get(message_type, False)


@dataclass(frozen=True, slots=True)
class InboundSettings:
    enabled: bool
    destination: str
    subscription_name: str
    dead_letter_destination: str
    # a queue consumed as ActiveMQ's exclusive consumer: of several gateways on one queue,
    # one takes every message (in order) while the others stand by
    exclusive: bool = True


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    host: str
    port: int
    max_body_bytes: int
    tolerance_s: int
    threads: int
    tmf622_usn_path: str
    tmf622_external_id_owner: str = ""
    secret: str = ""
    # the reverse proxy's address: its X-Forwarded-For and -Proto are believed ("" = none's)
    trusted_proxy: str = ""
    # when set, GET /subscriptions/<usn> and /metrics want `Authorization: Bearer <it>`
    read_token: str = ""


@dataclass(frozen=True, slots=True)
class ForwardSettings:
    url: str
    timeout_s: float
    attempts: int
    backoff_s: float
    concurrency: int = 4
    token: str = ""
    # an https url: its certificate checked against ca_file ("" = requests' CAs, certifi's);
    # a client certificate (mutual TLS) from cert_file, its key in key_file ("" = the same)
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: str
    format: str


@dataclass(frozen=True, slots=True)
class Settings:
    schema: SchemaSettings
    store: StoreSettings
    broker: BrokerSettings
    emission: EmissionSettings
    inbound: InboundSettings
    webhook: WebhookSettings
    forward: ForwardSettings
    logging: LoggingSettings
    mapping: StateMapping
    source: str = "<defaults>"
    # the secrets read from files ("webhook.secret" -> the path in GATEWAY_WEBHOOK__SECRET_FILE)
    secret_files: Mapping[str, str] = dataclasses.field(default_factory=dict)


_SECTIONS: dict[str, type[Any]] = {
    name: kind for name, kind in get_type_hints(Settings).items()
    if name not in ("mapping", "source", "secret_files")
}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
T = TypeVar("T")


_CONFIG_MAX_BYTES = 4 << 20  # far above any configuration; /dev/zero given by mistake ends
_CONFIG_MAX_VALUES = 100_000  # values in a configuration, each use of an alias counted


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            raw = f.read(_CONFIG_MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(raw) > _CONFIG_MAX_BYTES:
        raise ConfigError(str(path), f"over {_CONFIG_MAX_BYTES} bytes: not a configuration file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - raw.rfind(b"\n", 0, exc.start)
        raise ConfigError(str(path), f"not UTF-8 at line {line}, column {column} "
                          f"(byte 0x{raw[exc.start]:02x})") from exc
    try:
        data = yaml.load(text, Loader=_YamlLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(str(path), f"not valid YAML{where}: "
                          f"{getattr(exc, 'problem', None) or exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "expected a mapping of sections at the top level")
    if _values_beyond(data, _CONFIG_MAX_VALUES):
        raise ConfigError(str(path), f"expands to more than {_CONFIG_MAX_VALUES} values (YAML "
                          "aliases used over and over?): not a configuration file")
    return data


def _values_beyond(data: Any, limit: int) -> bool:
    """Whether `data` holds more than `limit` values, counting each use of a YAML alias:
    a few lines of aliases to aliases expand a billion-fold, and every later step walks them
    all. Stops counting at the limit."""
    left = limit
    stack = [data]
    while stack:
        value = stack.pop()
        left -= 1
        if left < 0:
            return True
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def _merge(base: dict[str, Any], over: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if prefix == "" and key not in base:
            raise ConfigError(key, "unknown section", (*_SECTIONS, "mapping"))
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict) and key != "mapping":
            merged[key] = _merge(merged[key], value, f"{prefix}{key}.")
        elif prefix == "" and key == "mapping" and isinstance(value, Mapping):
            # a mapping section replaces the defaults per top-level key (tables are whole units)
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _env_overrides(environ: Mapping[str, str], known: dict[str, Any]) -> dict[str, Any]:
    """GATEWAY_<SECTION>__<KEY>[__<KEY>...]=value, matched case-insensitively to known keys."""
    out: dict[str, Any] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        if "__" not in name:
            _check_not_misspelt(name, known)
            continue
        parts = name[len(ENV_PREFIX):].split("__")
        if "" in parts:
            raise ConfigError(name, f"not read: a part of the name is empty "
                                    f"(written {ENV_PREFIX}<SECTION>__<KEY>[__<KEY>...])")
        node: dict[str, Any] = out
        tree: Any = known
        for i, part in enumerate(parts):
            key = part.lower()
            if isinstance(tree, dict):
                for existing in tree:
                    if str(existing).lower() == key:
                        key = str(existing)
                        break
                tree = tree.get(key)
            else:
                tree = None
            if i == len(parts) - 1:
                try:
                    node[key] = json.loads(raw)
                except ValueError:
                    node[key] = raw
            else:
                node = node.setdefault(key, {})
    return out


def _secret_variable(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}__{key.upper()}"


def _secret_files(environ: Mapping[str, str], known: Mapping[str, Any]
                  ) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """GATEWAY_<SECTION>__<KEY>_FILE for a secret: its value is that file's text (systemd's
    LoadCredential=, a mounted Kubernetes or Docker secret), less the line breaks at its end.
    Returns the environment without those variables, the secrets read ("webhook.secret" ->
    value) and the files they came from. A _FILE variable for a key that is no secret is an
    error naming the variable (GATEWAY_BROKER__TLS_CA_FILE is a key of its own, not this)."""
    rest = dict(environ)
    values: dict[str, str] = {}
    paths: dict[str, str] = {}
    for section, key in sorted(SECRETS):
        variable = _secret_variable(section, key) + FILE_SUFFIX
        if variable not in environ:
            continue
        path = rest.pop(variable)
        if _secret_variable(section, key) in environ:
            raise ConfigError(variable, f"{_secret_variable(section, key)} is set too: give "
                                        "the secret one way")
        values[f"{section}.{key}"] = _read_secret_file(variable, path)
        paths[f"{section}.{key}"] = path
    for name in rest:
        if not (name.startswith(ENV_PREFIX) and name.endswith(FILE_SUFFIX) and "__" in name):
            continue
        section, _, key = name[len(ENV_PREFIX):-len(FILE_SUFFIX)].lower().partition("__")
        if isinstance(known.get(section), Mapping) and key in known[section]:
            files = ", ".join(_secret_variable(*pair) + FILE_SUFFIX for pair in sorted(SECRETS))
            raise ConfigError(name, f"only the secrets are read from a file: {files}; set "
                                    f"{name[:-len(FILE_SUFFIX)]} to the value instead")
    return rest, values, paths


def _read_secret_file(variable: str, path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(_SECRET_FILE_MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(variable, f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > _SECRET_FILE_MAX_BYTES:
        raise ConfigError(variable, f"{path} holds more than {_SECRET_FILE_MAX_BYTES:,} bytes: "
                                    "not a secret")
    try:
        text = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(variable, f"{path} is not UTF-8 text") from None
    if not text:
        raise ConfigError(variable, f"{path} is empty")
    return text


def _check_not_misspelt(name: str, known: Mapping[str, Any]) -> None:
    """GATEWAY_WEBHOOK_SECRET, ignored, would leave the webhook unsigned: name the right form.
    Variables naming no section (GATEWAY_INTERFACE of CGI, say) are not this gateway's."""
    rest = name[len(ENV_PREFIX):].lower()
    for section in known:
        if rest == section:
            meant = f"{ENV_PREFIX}{section.upper()}__<KEY>"
        elif rest.startswith(f"{section}_"):
            meant = f"{ENV_PREFIX}{section.upper()}__{rest[len(section) + 1:].upper()}"
        else:
            continue
        raise ConfigError(name, f"not read: an override has two underscores between the "
                                f"section and the key, {ENV_PREFIX}<SECTION>__<KEY> "
                                f"(did you mean {meant}?)")


def _coerce(value: Any, kind: Any, key: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true or false, found {value!r}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected an integer, found {value!r}")
    if kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool) \
                and math.isfinite(value):
            return float(value)
        raise ConfigError(key, f"expected a number, found {value!r}")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, f"expected a string, found {value!r}")
    if kind is Path:
        if isinstance(value, str) and value:
            return Path(value)
        raise ConfigError(key, f"expected a file path, found {value!r}")
    return value


def _section(cls: type[T], raw: Any, name: str) -> T:
    if not isinstance(raw, Mapping):
        raise ConfigError(name, "expected a mapping")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in raw:
        if key not in names:
            raise ConfigError(f"{name}.{key}", "unknown key", names)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.name not in raw:
            if field.default is dataclasses.MISSING:
                raise ConfigError(f"{name}.{field.name}", "missing")
            continue
        kind = hints[field.name]
        if field.name == "message_types":
            values[field.name] = _message_types(raw[field.name], f"{name}.{field.name}")
        elif name == "broker" and field.name == "failover":
            values[field.name] = _endpoints(raw[field.name], f"{name}.{field.name}")
        else:
            values[field.name] = _coerce(raw[field.name], kind, f"{name}.{field.name}")
    return cls(**values)


def _message_types(raw: Any, key: str) -> dict[str, bool]:
    if not isinstance(raw, Mapping):
        raise ConfigError(key, "expected a mapping of message type to true/false")
    out = {}
    for message_type, on in raw.items():
        if message_type not in MESSAGE_TYPES:
            raise ConfigError(f"{key}.{message_type}", "unknown message type", MESSAGE_TYPES)
        out[message_type] = _coerce(on, bool, f"{key}.{message_type}")
    return out


_HOST_PORT = ("HOST:PORT", "[IPV6]:PORT")


def endpoint_text(host: str, port: int) -> str:
    """HOST:PORT as written, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _endpoints(raw: Any, key: str) -> tuple[tuple[str, int], ...]:
    """A list of "HOST:PORT" (an IPv6 address in brackets), or the same comma-separated."""
    items = [part for part in raw.split(",") if part.strip()] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ConfigError(key, f"expected a list of HOST:PORT, found {raw!r}", _HOST_PORT)
    out: list[tuple[str, int]] = []
    for item in (item.strip() for item in items):
        if item.startswith("["):
            host, close, port = item[1:].partition("]")
            ok = bool(close) and port.startswith(":")
            port = port[1:]
        else:
            host, colon, port = item.rpartition(":")
            ok = bool(colon) and ":" not in host
        if not (ok and host.strip() and port.isascii() and port.isdigit()):
            raise ConfigError(key, f"{item!r} is not HOST:PORT", _HOST_PORT)
        if not 1 <= int(port) <= 65535:
            raise ConfigError(key, f"{item!r}: the port must be from 1 to 65535")
        if any(host.lower() == seen.lower() and int(port) == number for seen, number in out):
            raise ConfigError(key, f"{item!r} is listed twice")
        out.append((host, int(port)))
    return tuple(out)


POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# Numeric keys with bounds (inclusive; None: none above). Durations are seconds or ms, at most
# a day (a longer wait overflows the platform's timers); counts at least one, at most what a
# process can hold (threads) or what still is a bounded retry; sizes at most 256 MiB.
_DAY_S = 86_400
_MAX_DOCUMENT_BYTES = 256 * 1024 * 1024
_RANGES: tuple[tuple[str, str, float, float | None], ...] = (
    ("broker", "port", 1, 65535), ("webhook", "port", 0, 65535),  # webhook 0: any free port
    ("broker", "heartbeat_ms", 0, _DAY_S * 1000),  # 0: no heart-beats
    ("broker", "receipt_timeout_s", 0.001, _DAY_S),
    ("broker", "reconnect_initial_s", 0.001, _DAY_S), ("broker", "reconnect_max_s", 0.001, _DAY_S),
    ("broker", "max_in_flight", 1, 65536),
    ("emission", "max_attempts", 1, 1000), ("forward", "attempts", 1, 1000),
    ("forward", "timeout_s", 0.001, _DAY_S), ("forward", "backoff_s", 0, _DAY_S),
    ("forward", "concurrency", 1, 256), ("webhook", "threads", 1, 1024),
    ("webhook", "max_body_bytes", 1, _MAX_DOCUMENT_BYTES),
    ("schema", "max_bytes", 1, _MAX_DOCUMENT_BYTES), ("webhook", "tolerance_s", 1, None),
    ("store", "retention_days", 0, 36_500))  # 0: keep all
# Keys that must name something: an empty or blank value is an error, not a default.
_NAMED = (("broker", "host"), ("webhook", "host"), ("emission", "origin"),
          ("inbound", "subscription_name"))


_DESTINATIONS = ("/queue/", "/topic/")
_DESTINATION_FORMS = ("/queue/NAME", "/topic/NAME")
# RabbitMQ's name for a queue that exists already (declared with arguments of its own, such as
# x-single-active-consumer, which a SUBSCRIBE to /queue/NAME would declare again without): to
# consume only, since RabbitMQ confirms a SEND to one that does not exist and drops it
_DECLARED_QUEUE = "/amq/queue/"


def _is_destination(name: str, consumed: bool = False) -> bool:
    """A STOMP destination as ActiveMQ and RabbitMQ take it: /queue/NAME or /topic/NAME; and
    to consume from, RabbitMQ's /amq/queue/NAME."""
    prefixes = (*_DESTINATIONS, _DECLARED_QUEUE) if consumed else _DESTINATIONS
    prefix = next((p for p in prefixes if name.startswith(p)), None)
    return prefix is not None and bool(name[len(prefix):].strip())


def _destination_error(key: str, name: str, consumed: bool,
                       forms: tuple[str, ...] = _DESTINATION_FORMS) -> ConfigError:
    """Why `name` is not a destination `key` takes, and the forms it does take."""
    if consumed:
        forms = (*forms, f"{_DECLARED_QUEUE}NAME (RabbitMQ: a queue declared beforehand)")
    elif name.startswith(_DECLARED_QUEUE):
        return ConfigError(key, f"{name!r} is RabbitMQ's name of a queue declared beforehand, "
                           "which only inbound.destination takes: RabbitMQ confirms a SEND to "
                           "one that does not exist and drops the message", forms)
    return ConfigError(key, f"{name!r} is not a STOMP destination", forms)


def settings_in_force(settings: Settings) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Every configuration key as the gateway uses it (the file's and the environment's
    overrides applied), as a config file can hold it: without the secrets (the second part
    says which are set) and the mapping (`smile-gateway mapping` shows it), a store URL's
    password redacted."""
    shown: dict[str, dict[str, Any]] = {}
    secrets: list[str] = []
    for name in _SECTIONS:
        section = getattr(settings, name)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(section):
            value = getattr(section, field.name)
            if (name, field.name) in SECRETS:
                path = settings.secret_files.get(f"{name}.{field.name}")
                secrets.append(f"{name}.{field.name}: " + (
                    f"set (from {path}, named by "
                    f"{_secret_variable(name, field.name)}{FILE_SUFFIX})" if path else
                    "set (from the environment)" if value else "not set"))
                continue
            if isinstance(value, Path):
                value = str(value)
            elif name == "broker" and field.name == "failover":
                value = [endpoint_text(host, port) for host, port in value]
            elif name == "store" and field.name == "url":
                value = redact_url(value)
            elif isinstance(value, dict):
                value = dict(value)
            values[field.name] = value
        shown[name] = values
    return shown, secrets


def is_loopback(host: str) -> bool:
    """Whether an address is this machine's own (a name other than localhost may resolve
    to any address, so it is not)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# Standard Webhooks senders retry for about 28 hours (5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
# 10 h): a dedupe key must outlive the last retry
_RETENTION_ADVISED_DAYS = 2


def advisories(settings: Settings) -> list[str]:
    """Settings that work but put something at risk: `serve` logs each as a WARNING at
    start, `check-config` prints them (and still passes)."""
    found = []
    webhook, store, forward, broker = (settings.webhook, settings.store, settings.forward,
                                       settings.broker)
    if not webhook.secret and not is_loopback(webhook.host):
        found.append(f"webhook.host {webhook.host} takes requests from other machines and "
                     "webhook.secret is unset: anyone who reaches the port can post documents "
                     "and events")
    if 0 < store.retention_days < _RETENTION_ADVISED_DAYS:
        found.append(f"store.retention_days {store.retention_days:g} deletes a delivery's "
                     "dedupe key before a Standard Webhooks sender stops retrying it (its "
                     "schedule spans about 28 hours): a retry after that is recorded again; "
                     f"keep {_RETENTION_ADVISED_DAYS} days or more")
    url = urlsplit(forward.url)
    if forward.token and url.scheme == "http" and not is_loopback(url.hostname or ""):
        found.append(f"forward.token goes to {redact_url(forward.url)} in clear text: an "
                     "https forward.url keeps it from the network")
    if broker.password and not broker.tls and (settings.emission.enabled
                                               or settings.inbound.enabled):
        exposed = [endpoint_text(host, port) for host, port in broker.endpoints
                   if not is_loopback(host)]
        if exposed:
            found.append(f"broker.password goes to {' and '.join(exposed)} in clear text: "
                         "broker.tls with the broker's stomp+ssl port keeps it from the "
                         "network")
    return found


def redact_url(url: str) -> str:
    """A store URL without its password, for logs and messages; also one that does not parse
    (an unclosed IPv6 bracket, a port that is no number): what it has after `user:` and
    before the last `@` goes."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        port = parts.port
    except ValueError:
        scheme, sep, rest = url.partition("://")
        userinfo, at, host = rest.rpartition("@")
        if not at or ":" not in userinfo:
            return url
        return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{host}"
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    return urlunsplit(parts._replace(netloc=netloc + (f":{port}" if port else "")))


def _url_problem(url: str) -> str | None:
    """Why a URL cannot be read as one (an unclosed IPv6 bracket, a port that is no number or
    out of range), if it cannot."""
    try:
        urlsplit(url).port  # noqa: B018 (reading the port checks it)
    except ValueError as exc:
        return str(exc)
    return None


def _check_secrets_absent(data: Mapping[str, Any], source: str) -> None:
    store = data.get("store", {})
    url = store.get("url") if isinstance(store, Mapping) else None
    if isinstance(url, str) and _url_problem(url) is None and urlsplit(url).password is not None:
        raise ConfigError("store.url", f"the password in it is a secret: remove it from {source} "
                          "and give it in PGPASSWORD or ~/.pgpass, or give the whole URL in "
                          f"{ENV_PREFIX}STORE__URL")
    for section, key in SECRETS:
        value = data.get(section, {})
        if isinstance(value, Mapping) and value.get(key) not in (None, ""):
            env = _secret_variable(section, key)
            raise ConfigError(f"{section}.{key}",
                              f"secrets are read from the environment only: set {env} "
                              f"and remove the key from {source}")


def _check_tls_files(section: str, on: bool, off: str, ca: tuple[str, str],
                     cert: tuple[str, str], key: tuple[str, str]) -> None:
    """TLS files, each (its key name, its value): they exist and load as PEM, and none is
    given while TLS is off (`off` says how to turn it on), which would connect in plain text
    to a peer its operator meant to reach over TLS."""
    for name, value in (ca, cert, key):
        if value and not on:
            raise ConfigError(f"{section}.{name}", f"given while {off}")
        if value and not Path(value).is_file():
            raise ConfigError(f"{section}.{name}", f"no file at {value}")
    if key[1] and not cert[1]:
        raise ConfigError(f"{section}.{key[0]}", f"a key without {section}.{cert[0]}")
    if not on:
        return
    try:
        context = ssl.create_default_context(cafile=ca[1] or None)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{section}.{ca[0]}", f"cannot load {ca[1]} as PEM certificates: "
                          f"{exc}") from exc
    if cert[1]:
        try:
            context.load_cert_chain(cert[1], key[1] or None)
        except (ssl.SSLError, OSError) as exc:
            name = key[0] if key[1] else cert[0]
            raise ConfigError(f"{section}.{name}", f"cannot load the client certificate and "
                              f"its key ({cert[1]}, {key[1] or 'the same file'}): {exc}"
                              ) from exc


def load_settings(path: str | Path | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the file (`path`, else $GATEWAY_CONFIG, else ./config.yaml if present),
    then GATEWAY_* variables. Pure apart from reading the files: pass `environ` in tests."""
    environ = {} if environ is None else environ
    base = _read_yaml(DEFAULTS_PATH)
    base_dir = DEFAULTS_PATH.resolve().parent
    chosen = path if path is not None else environ.get(CONFIG_ENV)
    source = "<defaults>"
    data = base
    if chosen is None and Path("config.yaml").is_file():
        chosen = "config.yaml"
    if chosen is not None:
        file_path = Path(chosen)
        user = _read_yaml(file_path)
        _check_secrets_absent(user, str(file_path))
        data = _merge(base, user)
        source = str(file_path)
        if "schema" in user and "path" in user.get("schema", {}):
            base_dir = file_path.resolve().parent
    environ, secret_values, secret_paths = _secret_files(environ, data)
    data = _merge(data, _env_overrides(environ, data))
    for dotted, value in secret_values.items():
        section, key = dotted.split(".")
        data[section] = {**data[section], key: value}

    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        sections[name] = _section(cls, data.get(name, {}), name)
    schema: SchemaSettings = sections["schema"]
    if not schema.path.is_absolute():
        schema = SchemaSettings(base_dir / schema.path, schema.max_bytes)
    if not schema.path.is_file():
        raise ConfigError("schema.path", f"no schema file at {schema.path}")
    sections["schema"] = schema
    if sections["logging"].level.upper() not in _LOG_LEVELS:
        raise ConfigError("logging.level", f"unknown level {sections['logging'].level!r}",
                          _LOG_LEVELS)
    if sections["logging"].format not in ("text", "json"):
        raise ConfigError("logging.format", "unknown format", ("text", "json"))
    url = sections["store"].url
    if not url.startswith(("sqlite:///", *POSTGRES_SCHEMES)):
        raise ConfigError("store.url", f"unsupported store {redact_url(url)!r}",
                          ("sqlite:///PATH", "postgresql://USER@HOST:PORT/DATABASE"))
    if url.startswith("sqlite:///") and url[len("sqlite:///"):].strip() in ("", ":memory:"):
        raise ConfigError("store.url", f"{url!r} names no file: SQLite would keep the store in "
                          "memory or a temporary file, and lose all of it when the gateway "
                          "stops", ("sqlite:///PATH", "sqlite:////ABSOLUTE/PATH"))
    if url.startswith(POSTGRES_SCHEMES) and (problem := _url_problem(url)):
        raise ConfigError("store.url", f"{redact_url(url)!r} is not a URL: {problem}",
                          ("postgresql://USER@HOST:PORT/DATABASE",))
    for name in ("emission", "inbound"):
        dest = sections[name].destination
        if not _is_destination(dest, consumed=name == "inbound"):
            raise _destination_error(f"{name}.destination", dest, consumed=name == "inbound")
    if sections["webhook"].secret:
        secret_keys(sections["webhook"].secret)  # raises ConfigError naming webhook.secret
    for name, key, low, high in _RANGES:
        value = getattr(sections[name], key)
        if not low <= value <= (high if high is not None else math.inf):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise ConfigError(f"{name}.{key}", f"must be {bounds}, found {value}")
    for name, key in _NAMED:
        if not getattr(sections[name], key).strip():
            raise ConfigError(f"{name}.{key}", "must not be empty")
    broker = sections["broker"]
    _check_tls_files("broker", broker.tls, "broker.tls is false: set broker.tls: true (the "
                     "broker's stomp+ssl port) or remove it", ("tls_ca_file", broker.tls_ca_file),
                     ("tls_cert_file", broker.tls_cert_file),
                     ("tls_key_file", broker.tls_key_file))
    for host, port in broker.failover:
        if host.lower() == broker.host.lower() and port == broker.port:
            raise ConfigError("broker.failover", f"{endpoint_text(host, port)!r} is "
                              "broker.host:broker.port itself: list the other brokers")
    proxy = sections["webhook"].trusted_proxy
    if proxy:
        try:
            ipaddress.ip_address(proxy)
        except ValueError:
            raise ConfigError("webhook.trusted_proxy", f"{proxy!r} is not an IP address (the "
                              "proxy's, as the gateway sees it)",
                              ("\"\" (none)", "127.0.0.1", "::1")) from None
    usn_path = sections["webhook"].tmf622_usn_path
    if not all(part.strip() for part in usn_path.split(".")):
        raise ConfigError("webhook.tmf622_usn_path", f"{usn_path!r} is not a dotted path of "
                          "JSON member names", ("event.productOrder.externalId",))
    dead = sections["inbound"].dead_letter_destination
    if dead and not _is_destination(dead):
        raise _destination_error("inbound.dead_letter_destination", dead, consumed=False,
                                 forms=("\"\" (store only)", *_DESTINATION_FORMS))
    forward = sections["forward"]
    _check_tls_files("forward", forward.url.lower().startswith("https://"),
                     "forward.url is not https://", ("ca_file", forward.ca_file),
                     ("cert_file", forward.cert_file), ("key_file", forward.key_file))
    forward_url = forward.url
    if forward_url:
        if problem := _url_problem(forward_url):
            raise ConfigError("forward.url", f"{forward_url!r} is not a URL: {problem}",
                              ("http://HOST[:PORT]/PATH", "https://HOST[:PORT]/PATH"))
        parts = urlsplit(forward_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("forward.url", f"{forward_url!r} is not an http(s) URL with a host",
                              ("\"\" (forwarding off)", "http://HOST[:PORT]/PATH",
                               "https://HOST[:PORT]/PATH"))
    return Settings(mapping=load_mapping(data.get("mapping")), source=source,
                    secret_files=secret_paths, **sections)
