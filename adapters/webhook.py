"""The Flask app: Smile's webhook, order events, TMF622 listener, views, health, metrics.

Every error is application/problem+json. Bad input is a 4xx, never a 500: the one error
handler below maps the GatewayError tree (and werkzeug's HTTP errors) to responses.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flask import Flask, Request, Response, request
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import get_content_length

import gateway
from gateway.config import Settings
from gateway.errors import (
    DocumentInvalidError,
    DocumentParseError,
    GatewayError,
    MappingError,
    StoreError,
    TransitionError,
    UnknownSubscriptionError,
    UnsupportedCharsetError,
    clip,
)
from gateway.events import parse_order_event, parse_tmf622_event
from gateway.jsontext import json_text
from gateway.ports import BROKER, FORWARD, Store
from gateway.service import CONSUME_OUTCOMES, GatewayService
from gateway.signatures import SIGNATURE_HEADERS, SignatureError, secret_keys, verify

log = logging.getLogger(__name__)

# docs/openapi.yaml, linked from the gateway package (a copy in a wheel)
OPENAPI = Path(gateway.__file__).with_name("openapi.yaml")
XML_TYPES = ("application/xml", "text/xml")
PROBLEM = "application/problem+json"


class _Problem(Exception):
    def __init__(self, status: int, title: str, detail: str,
                 errors: list[dict[str, Any]] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        self.status, self.title, self.detail, self.errors = status, title, detail, errors
        self.headers = dict(headers or {})
        super().__init__(detail)


def _current_request() -> Request:
    """The request itself rather than Flask's proxy of it: every attribute read through the
    proxy looks the request context up again (the hot route read nine; 80k instructions)."""
    return request._get_current_object()  # type: ignore[attr-defined, no-any-return]


def problem_json(status: int, title: str, detail: str,
                 errors: list[dict[str, Any]] | None = None) -> str:
    """An RFC 9457 problem document, the body of every error the gateway answers."""
    body: dict[str, Any] = {"type": f"https://smile-gateway.invalid/problems/{status}",
                            "title": title, "status": status, "detail": clip(detail, 1000)}
    if errors is not None:
        body["errors"] = errors
    return json_text(body)


# seconds a sender is asked to wait before resending what met the store unavailable (a
# lock held past the busy timeout, a full disk, a database restarting)
STORE_RETRY_AFTER_S = "5"


def problem(status: int, title: str, detail: str,
            errors: list[dict[str, Any]] | None = None) -> Response:
    return Response(problem_json(status, title, detail, errors), status=status,
                    mimetype=PROBLEM)


def _header(req: Request, name: str) -> str | None:
    """A header's value as the UTF-8 it was sent in (a WSGI server hands header bytes on as
    latin-1, PEP 3333); None when absent or empty. Bytes that are no UTF-8 are a 400."""
    value: str | None = req.environ.get("HTTP_" + name.upper().replace("-", "_"))
    if not value:
        return None
    if value.isascii():  # the common case, as it is
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise _Problem(400, "Bad Request", f"header {name} is not UTF-8") from None


def _unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose names are unique. With a name given twice, parsers differ on which
    value counts (Python's takes the last, others the first): a proxy or the order system
    could read another eventId or state than the gateway did, so such a body is refused."""
    obj: dict[str, Any] = {}
    for name, value in pairs:
        if name in obj:
            raise ValueError(f"the name {clip(name, 60)!r} is given twice in one object")
        obj[name] = value
    return obj


def _no_constant(name: str) -> Any:
    """NaN, Infinity and -Infinity, which Python's parser takes and JSON does not have."""
    raise ValueError(f"{name} is not a JSON value")


MAX_NUMBER_DIGITS = 4300  # Python's default int_max_str_digits, whatever the interpreter's


def _bounded_int(text: str) -> int:
    """int(), bounded here: over Python's limit its refusal would answer the sender with
    advice about the interpreter (sys.set_int_max_str_digits) instead of what is wrong, and
    with the limit lifted (PYTHONINTMAXSTRDIGITS=0) a long number costs quadratic time."""
    digits = len(text) - text.startswith("-")
    if digits > MAX_NUMBER_DIGITS:
        raise ValueError(f"a number of {digits} digits, longer than any this gateway reads "
                         f"({MAX_NUMBER_DIGITS})")
    return int(text)


class _StoreOutage:
    """The requests that met the store unavailable, logged as a run rather than a line each
    (a full disk or a lock held elsewhere fails every request: thousands of ERROR lines a
    second, into a journal that may share the disk): the first at once, then a line at most
    every `every` seconds with how many met it since, and one when a request gets through
    again. `active` is read without the lock: a request that got through pays that read."""

    def __init__(self, clock: Callable[[], float], every: float = 30.0) -> None:
        self.clock = clock
        self.every = every
        self.active = False
        self._lock = threading.Lock()
        self._began = self._logged = 0.0
        self._total = self._held = 0

    def failed(self, exc: StoreError) -> None:
        detail = str(exc).removeprefix("store unavailable: ")
        with self._lock:
            now = self.clock()
            first = not self.active
            if first:
                self.active, self._began, self._total, self._held = True, now, 0, 0
            self._total += 1
            if not first and now - self._logged < self.every:
                self._held += 1
                return
            held, total, lasted = self._held, self._total, now - self._began
            self._held, self._logged = 0, now
        if first:  # logged outside the lock, as the others
            log.error("store unavailable: %s (answering 503 with Retry-After until it is "
                      "back; the requests that meet it are counted, logged at most every "
                      "%g s)", detail, self.every, extra={"requests": 1})
        else:
            log.error("store still unavailable: %s (%d requests answered 503 since the last "
                      "line, %d since it began %.0f s ago)", detail, held + 1, total, lasted,
                      extra={"requests": total, "seconds": round(lasted, 3)})

    def passed(self) -> None:
        with self._lock:
            if not self.active:
                return
            self.active = False
            total, lasted = self._total, self.clock() - self._began
        log.info("store available again: %d requests were answered 503 over %.0f s",
                 total, lasted, extra={"requests": total, "seconds": round(lasted, 3)})


def _translate(exc: Exception, outage: _StoreOutage) -> Response:
    """The one map from exceptions to HTTP responses; each refusal (4xx) is logged too, as
    the sender was answered, so that an operator asked why a sender's requests fail finds
    why, and from whom (control characters from the request escaped by the log's format)."""
    response = _problem_for(exc)
    if isinstance(exc, StoreError):
        outage.failed(exc)
    elif response.status_code < 500:  # other 5xx are logged where they arise, as errors
        answered = json.loads(response.get_data())
        fields = {"method": request.method, "path": clip(request.path, 200),
                  "status": response.status_code, "remote": request.remote_addr or "?"}
        also = ""  # the sender's id of the delivery, a proxy's of the request
        for key, header, field in (("HTTP_WEBHOOK_ID", "webhook-id", "webhook_id"),
                                   ("HTTP_X_REQUEST_ID", "request-id", "request_id")):
            value = request.environ.get(key)
            if value:
                fields[field] = clip(value, 120)
                also += f", {header} {fields[field]}"
        log.info("refused %s %s: %d %s: %s (from %s%s)", request.method,  # on one line:
                 fields["path"], response.status_code, answered["title"],  # logs.py
                 clip(answered["detail"]), fields["remote"], also, extra=fields)
    return response


def _problem_for(exc: Exception) -> Response:
    """The problem+json answer for an exception (the one map of them)."""
    if isinstance(exc, _Problem):
        response = problem(exc.status, exc.title, exc.detail, exc.errors)
        response.headers.update(exc.headers)
        return response
    if isinstance(exc, SignatureError):
        return problem(401, "Unauthorized", str(exc))
    if isinstance(exc, UnsupportedCharsetError):
        return problem(415, "Unsupported Media Type", str(exc))
    if isinstance(exc, DocumentParseError):
        return problem(400, "Bad Request", str(exc), [v.as_dict() for v in exc.violations])
    if isinstance(exc, DocumentInvalidError):
        return problem(422, "Unprocessable Content", str(exc),
                       [v.as_dict() for v in exc.violations])
    if isinstance(exc, TransitionError):
        return problem(409, "Conflict", str(exc))
    if isinstance(exc, MappingError | UnknownSubscriptionError):
        return problem(422, "Unprocessable Content", str(exc))
    if isinstance(exc, StoreError):
        response = problem(503, "Service Unavailable", "the store is unavailable; retry later")
        response.headers["Retry-After"] = STORE_RETRY_AFTER_S  # nothing was recorded: resend
        return response
    if isinstance(exc, HTTPException):
        code = exc.code or 500
        response = problem(code, exc.name, exc.description or exc.name)
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value  # e.g. Allow on a 405 (RFC 9110)
        return response
    if isinstance(exc, GatewayError):
        return problem(422, "Unprocessable Content", str(exc))
    log.exception("unexpected error on %s %s", request.method, request.path)
    return problem(500, "Internal Server Error", "unexpected error; see the gateway's log")


class _StoreCollector:
    """Outbox sizes per channel and status, the age of each channel's oldest pending item,
    dead letters per source (all, and those not settled), and the room on a SQLite store's
    disk, read from the store at scrape time."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock

    def collect(self) -> Any:
        family = GaugeMetricFamily("smile_gateway_outbox_items", "Outbox items by status",
                                   labels=["channel", "status"])
        letters = GaugeMetricFamily("smile_gateway_dead_letters",
                                    "Inbound documents refused and kept, by source",
                                    labels=["source"])
        oldest = GaugeMetricFamily("smile_gateway_outbox_oldest_pending_seconds",
                                   "Age of the oldest pending outbox item (0: none pending)",
                                   labels=["channel"])
        outstanding = GaugeMetricFamily("smile_gateway_dead_letters_outstanding",
                                        "Dead letters not settled (replayed or "
                                        "discarded), by source",
                                        labels=["source"])
        disk = None
        try:
            for (channel, status), count in sorted(self.store.counts().items()):
                family.add_metric([channel, status], count)
            queued = self.store.oldest_pending()
            now = self.clock()
            for channel in (BROKER, FORWARD):
                at = queued.get(channel)
                oldest.add_metric([channel], 0.0 if at is None else max(0.0, now - at))
            for source, (kept, waiting) in sorted(self.store.dead_letter_counts().items()):
                letters.add_metric([source], kept)
                outstanding.add_metric([source], waiting)
            free = self.store.disk_free()
            if free is not None:  # a SQLite store's: what readiness compares with its 4 MiB
                disk = GaugeMetricFamily("smile_gateway_store_disk_free_bytes",
                                         "Bytes free on the disk of the SQLite store",
                                         value=free)
        except StoreError:
            pass
        yield family
        yield oldest
        yield letters
        yield outstanding
        if disk is not None:
            yield disk


def _run_checks(checks: Mapping[str, Callable[[], None]]) -> dict[str, str | None]:
    """Each readiness check's failure (None: it passed), in the checks' order."""
    results: dict[str, str | None] = {}
    for name, check in checks.items():
        try:
            check()
            results[name] = None
        except Exception as exc:  # a readiness probe reports, it does not fail
            results[name] = clip(str(exc)) or type(exc).__name__
    return results


class _ReadyCollector:
    """Each check of /readyz as a gauge, run at scrape time: 1 passing, 0 failing."""

    def __init__(self, checks: Mapping[str, Callable[[], None]]) -> None:
        self.checks = checks

    def collect(self) -> Any:
        family = GaugeMetricFamily("smile_gateway_ready",
                                   "1 while the readiness check passes, 0 while it fails "
                                   "(GET /readyz says why)", labels=["check"])
        for name, failure in _run_checks(self.checks).items():
            family.add_metric([name], 1.0 if failure is None else 0.0)
        yield family


class _AcceptedCollector:
    """Smile documents accepted by source, the webhook's counted by its route and the
    broker's by the consumer; and the consumer's messages by outcome (read at scrape time)."""

    def __init__(self, webhook: Counter,
                 broker: Callable[[], Mapping[str, int]] | None) -> None:
        self.webhook = webhook
        self.broker = broker

    def collect(self) -> Any:
        accepted = CounterMetricFamily("smile_gateway_documents_accepted",
                                       "Smile documents accepted, by source", labels=["source"])
        counted = next(iter(self.webhook.collect())).samples
        accepted.add_metric(["webhook"], next(s.value for s in counted
                                              if s.name.endswith("_total")))
        if self.broker is None:  # no consumer runs
            yield accepted
            return
        counts = self.broker()
        accepted.add_metric(["broker"], counts.get("accepted", 0))
        outcomes = CounterMetricFamily("smile_gateway_broker_messages",
                                       "Messages consumed from the broker and acknowledged, by "
                                       "outcome", labels=["outcome"])
        for outcome in CONSUME_OUTCOMES:
            outcomes.add_metric([outcome], counts.get(outcome, 0))
        yield accepted
        yield outcomes


def create_app(service: GatewayService, settings: Settings,
               ready_checks: Mapping[str, Callable[[], None]] | None = None,
               test_config: Mapping[str, Any] | None = None,
               clock: Callable[[], float] = time.time,
               broker_outcomes: Callable[[], Mapping[str, int]] | None = None) -> Flask:
    """The app factory: routes over the service, nothing built at import time.
    `broker_outcomes`: the consumer's messages by outcome, when one runs in this process."""
    app = Flask("smile_gateway")
    app.config.update(MAX_CONTENT_LENGTH=settings.webhook.max_body_bytes,
                      JSON_SORT_KEYS=False)
    if test_config:
        app.config.update(test_config)
    keys = secret_keys(settings.webhook.secret) if settings.webhook.secret else None
    read_token = settings.webhook.read_token.encode() if settings.webhook.read_token else None

    def reader() -> None:
        """With webhook.read_token, the read routes want it as a bearer token."""
        if read_token is None:
            return
        given = _current_request().environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode("latin-1", "replace"), read_token):  # as sent (PEP 3333)
            raise _Problem(401, "Unauthorized", "this route wants Authorization: Bearer with "
                           "the webhook.read_token", headers={
                               "WWW-Authenticate": 'Bearer realm="smile-gateway"'})
    checks = dict(ready_checks or {})

    registry = CollectorRegistry()
    requests_total = Counter("smile_gateway_http_requests", "HTTP requests by route and status",
                             ["route", "status"], registry=registry)
    latency = Histogram("smile_gateway_http_request_seconds", "HTTP request duration",
                        ["route"], registry=registry)
    accepted_webhook = Counter("smile_gateway_documents_accepted", "Smile documents accepted",
                               registry=None)  # exported with the broker's, by source
    registry.register(_AcceptedCollector(accepted_webhook, broker_outcomes))
    registry.register(_StoreCollector(service.store, clock))
    registry.register(_ReadyCollector(checks))
    # what any service exports: its version, its process, the interpreter
    Gauge("smile_gateway_build_info", "The gateway's version (always 1)", ["version"],
          registry=registry).labels(gateway.__version__).set(1)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)

    # Labelled children by (route, status): routes and statuses are few, and a labels() call
    # costs more than the increment itself.
    children: dict[tuple[str, int], tuple[Any, Any]] = {}
    wsgi_app = app.wsgi_app

    def measured(environ: dict[str, Any], start_response: Any) -> Any:
        """Counts and times each request by its route and status, as the status goes out
        (a WSGI wrapper rather than an after_request hook: a fifth of the cost)."""
        started = time.perf_counter()

        def counted(status: str, headers: Any, exc_info: Any = None) -> Any:
            request_object = environ.get("werkzeug.request")  # Flask's, set as it began
            rule = getattr(request_object, "url_rule", None)
            key = (rule.rule if rule is not None else "(none)", int(status[:3]))
            pair = children.get(key)
            if pair is None:
                pair = children[key] = (requests_total.labels(key[0], str(key[1])),
                                        latency.labels(key[0]))
            pair[0].inc()
            pair[1].observe(time.perf_counter() - started)
            return start_response(status, headers, exc_info)

        return wsgi_app(environ, counted)

    app.wsgi_app = measured  # type: ignore[method-assign]

    outage = _StoreOutage(clock)
    app.register_error_handler(Exception, lambda exc: _translate(exc, outage))

    def body_bytes(req: Request) -> bytes:
        coding = req.environ.get("HTTP_CONTENT_ENCODING")
        if coding and any(c.strip().lower() not in ("", "identity") for c in coding.split(",")):
            # RFC 9110, 15.5.16: a coding the gateway does not take is refused, not read as
            # if the body were plain (a gzipped document or event is no XML or JSON)
            raise _Problem(415, "Unsupported Media Type",
                           f"Content-Encoding {clip(coding, 60)!r} is not taken: send the body "
                           "as it is (identity)", headers={"Accept-Encoding": "identity"})
        length = get_content_length(req.environ)  # req.content_length, without its headers view
        if length is not None and length > settings.webhook.max_body_bytes:
            raise _Problem(413, "Content Too Large",
                           f"body of {length} bytes is over the limit of "
                           f"{settings.webhook.max_body_bytes}")
        data = req.get_data(cache=True)
        if len(data) > settings.webhook.max_body_bytes:
            raise _Problem(413, "Content Too Large",
                           f"body is over the limit of {settings.webhook.max_body_bytes}")
        return data

    def signed(req: Request, data: bytes) -> str | None:
        """The webhook-id when signatures are on (verified), else the header as given."""
        if keys is not None:
            headers = {name: _header(req, name) or "" for name in SIGNATURE_HEADERS}
            return verify(keys, headers, data, clock(), settings.webhook.tolerance_s)
        return _header(req, "webhook-id")

    def json_body() -> Any:
        req = _current_request()
        if req.mimetype != "application/json":
            raise _Problem(415, "Unsupported Media Type",
                           f"expected application/json, found {req.mimetype or 'none'}")
        data = body_bytes(req)
        signed(req, data)
        try:
            return json.loads(data, object_pairs_hook=_unique_names, parse_constant=_no_constant,
                              parse_int=_bounded_int)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Problem(400, "Bad Request", f"body is not valid JSON: {exc}") from exc
        except RecursionError as exc:  # "[[[[..." nested deeper than the parser's stack
            raise _Problem(400, "Bad Request", "body is nested too deeply") from exc

    @app.post("/smile/messages")
    def smile_messages() -> Response:
        req = _current_request()
        if req.mimetype not in XML_TYPES:
            raise _Problem(415, "Unsupported Media Type",
                           f"expected application/xml or text/xml, found "
                           f"{req.mimetype or 'none'}")
        data = body_bytes(req)
        webhook_id = signed(req, data)  # over the bytes as they came
        charset = req.mimetype_params.get("charset")
        if charset:
            data = service.codec.labelled(data, charset)
        headers: dict[str, str] = {}
        message_type = _header(req, "X-Smile-Message-Type")
        if message_type:
            headers["smileMessageType"] = message_type
        request_id = _header(req, "X-Smile-Provision-Request-Id")
        if request_id:
            headers["provisionRequestId"] = request_id
        result = service.accept_smile_document(
            data, message_type, headers or None,
            f"webhook:{webhook_id}" if webhook_id else None, "webhook")
        accepted_webhook.inc()
        if outage.active:
            outage.passed()
        return Response(json_text(result), status=202, content_type="application/json")

    @app.post("/orders/events")
    def order_events() -> Response:
        change = parse_order_event(json_body())
        result = service.apply_state_change(change)
        if outage.active:
            outage.passed()
        return Response(json_text(result), status=202, mimetype="application/json")

    @app.post("/listener/productOrderStateChangeEvent")
    def tmf622_listener() -> Response:
        change = parse_tmf622_event(json_body(), settings.webhook.tmf622_usn_path,
                                    settings.webhook.tmf622_external_id_owner)
        service.apply_state_change(change)
        if outage.active:
            outage.passed()
        return Response(status=204)

    @app.get("/subscriptions/<path:usn>")
    def subscription(usn: str) -> Response:
        reader()
        try:
            view = service.subscription_view(usn)
        except UnknownSubscriptionError as exc:
            raise _Problem(404, "Not Found", str(exc)) from exc
        return Response(json_text(view), mimetype="application/json")

    @app.get("/healthz")
    def healthz() -> Response:
        return Response(json_text({"status": "ok"}), mimetype="application/json")

    @app.get("/readyz")
    def readyz() -> Response:
        failures = _run_checks(checks)
        ok = all(failure is None for failure in failures.values())
        results = {name: "ok" if failure is None else f"failing: {failure}"
                   for name, failure in failures.items()}
        body = json_text({"status": "ready" if ok else "not ready", "checks": results})
        return Response(body, status=200 if ok else 503, mimetype="application/json")

    @app.get("/metrics")
    def metrics() -> Response:
        reader()
        return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4")

    @app.get("/openapi.yaml")
    def openapi() -> Response:
        return Response(OPENAPI.read_bytes(), mimetype="application/yaml")

    return app
