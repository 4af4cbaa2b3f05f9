"""JSON inputs from the order side, checked field by field into StateChanges (pure)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from gateway.domain import (
    INT_RANGE,
    LONG_RANGE,
    PlanScheduleItem,
    Property,
    PropertyType,
    PropertyValue,
    Statuses,
    Subscription,
    SubscriptionFeaturesUpdate,
    token_value,
)
from gateway.errors import DocumentInvalidError, Violation, clip
from gateway.service import NEW_SUBSCRIPTION_FLAGS, StateChange

# What XML 1.0 can carry (its Char production): no control characters but tab, newline and
# carriage return, no lone surrogates (JSON's "\ud800" decodes to one), no U+FFFE or U+FFFF.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# Ids travel as STOMP headers (usn, correlation-id), and ActiveMQ refuses a header over 10 KB.
ID_CHARS = 1024
MAX_OFFSET = timedelta(hours=14)
DECIMAL_DIGITS = 100  # a Decimal property's digits, written out: "1e999999999" is a 1 GB text


def _text_problem(value: str, limit: int | None = None) -> str | None:
    """Why `value` cannot go into a document, a header or the store; None when it can."""
    bad = _NOT_XML.search(value)
    if bad is not None:
        return (f"U+{ord(bad.group()):04X} at offset {bad.start()} is not a character XML "
                "can carry")
    if limit is not None and len(value) > limit:
        return f"expected at most {limit} characters, found {len(value)}"
    return None


class _Problems:
    def __init__(self) -> None:
        self.found: list[Violation] = []

    def add(self, path: str, message: str) -> None:
        self.found.append(Violation(0, 0, path, message))

    def string(self, data: Mapping[str, Any], key: str, path: str,
               required: bool = True, limit: int | None = None) -> str | None:
        value = data.get(key)
        if value is None:
            if required:
                self.add(f"{path}/{key}", "required")
            return None
        if not isinstance(value, str) or not value.strip():
            self.add(f"{path}/{key}", f"expected a non-empty string, found {_kind(value)}")
            return None
        problem = _text_problem(value, limit)
        if problem is not None:
            self.add(f"{path}/{key}", problem)
            return None
        return value

    def integer(self, data: Mapping[str, Any], key: str, path: str, bounds: tuple[int, int],
                default: int | None = None) -> int | None:
        """An integer within `bounds` (the schema type's range, inclusive)."""
        value = data.get(key, default)
        if value is None:
            self.add(f"{path}/{key}", "required")
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(f"{path}/{key}", f"expected an integer, found {_kind(value)}")
            return None
        if not bounds[0] <= value <= bounds[1]:
            self.add(f"{path}/{key}", f"expected an integer from {bounds[0]} to {bounds[1]}, "
                     f"found {value}")
            return None
        return value

    def objects(self, items: list[Any], path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
        """(path, item) for each JSON object in `items`; anything else is a problem."""
        for i, item in enumerate(items):
            if isinstance(item, Mapping):
                yield f"{path}/{i}", item
            else:
                self.add(f"{path}/{i}", f"expected an object, found {_kind(item)}")

    def raise_if_any(self) -> None:
        if self.found:
            summary = "; ".join(f"{v.path}: {v.message}" for v in self.found[:5])
            raise DocumentInvalidError(f"invalid event: {summary}", self.found)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", bool: "a boolean", int: "a number",
            float: "a number", str: "a string", type(None): "null"}.get(type(value),
                                                                        type(value).__name__)


def _top_object(payload: Any) -> Mapping[str, Any]:
    if not isinstance(payload, Mapping):
        problem = f"expected a JSON object, found {_kind(payload)}"
        raise DocumentInvalidError(f"invalid event: /: {problem}",
                                   [Violation(0, 0, "/", problem)])
    return payload


def parse_order_event(payload: Any) -> StateChange:
    """`{"eventId","usn","vocabulary","state","subscription"?}`; DocumentInvalidError lists
    every problem with its JSON path."""
    p = _Problems()
    payload = _top_object(payload)
    event_id = p.string(payload, "eventId", "", limit=ID_CHARS)
    usn = p.string(payload, "usn", "", limit=ID_CHARS)
    usn = usn and token_value(usn)  # as a Smile document carries it
    vocabulary = p.string(payload, "vocabulary", "")
    state = p.string(payload, "state", "")
    subscription = None
    if payload.get("subscription") is not None:
        subscription = _subscription(p, payload["subscription"], usn or "")
    p.raise_if_any()
    assert event_id and usn and vocabulary and state
    return StateChange(event_id, usn, vocabulary, state, subscription)


def _subscription(p: _Problems, raw: Any, usn: str) -> SubscriptionFeaturesUpdate | None:
    path = "/subscription"
    if not isinstance(raw, Mapping):
        p.add(path, f"expected an object, found {_kind(raw)}")
        return None
    sid = p.integer(raw, "sid", path, LONG_RANGE)
    name = p.string(raw, "serviceName", path)
    parent = p.string(raw, "parent", path)
    properties = _properties(p, raw.get("properties", []), f"{path}/properties")
    plans = []
    raw_plans = raw.get("plans")
    if not isinstance(raw_plans, list) or not raw_plans:
        p.add(f"{path}/plans", "expected a non-empty array of {planCode, planScheduleType, start}")
    else:
        for ppath, plan in p.objects(raw_plans, f"{path}/plans"):
            code = p.string(plan, "planCode", ppath)
            kind = p.integer(plan, "planScheduleType", ppath, INT_RANGE, default=1)
            start = None
            if plan.get("start") is not None:
                start = _datetime(p, plan["start"], f"{ppath}/start")
            if code is not None and kind is not None:
                plans.append(PlanScheduleItem(code, kind, start))
    if sid is None or name is None or parent is None or properties is None or not plans:
        return None
    statuses: Statuses = NEW_SUBSCRIPTION_FLAGS
    return SubscriptionFeaturesUpdate(
        Subscription(usn, sid, name, parent, properties, statuses), (), tuple(plans))


def _datetime(p: _Problems, value: Any, path: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        p.add(path, "expected an ISO 8601 date-time with a UTC offset")
        return None
    offset = parsed.utcoffset()
    if offset is not None and abs(offset) > MAX_OFFSET:  # xs:dateTime's bound
        p.add(path, "expected a UTC offset from -14:00 to +14:00")
        return None
    if offset is not None and offset % timedelta(minutes=1):  # xs:dateTime's is hh:mm
        found = (parsed.tzname() or "").removeprefix("UTC")  # fromisoformat's: UTC+hh:mm:ss
        p.add(path, f"expected a UTC offset in whole minutes, found {found}")
        return None
    return parsed


def _properties(p: _Problems, raw: Any, path: str) -> tuple[Property, ...] | None:
    if not isinstance(raw, list):
        p.add(path, f"expected an array of {{type, name, value}}, found {_kind(raw)}")
        return None
    out = []
    for ipath, item in p.objects(raw, path):
        kind_text = p.string(item, "type", ipath)
        name = p.string(item, "name", ipath)
        if kind_text is None or name is None:
            continue
        try:
            kind = PropertyType(kind_text)
        except ValueError:
            p.add(f"{ipath}/type", f"unknown type {kind_text!r} (allowed: "
                  f"{', '.join(t.value for t in PropertyType)})")
            continue
        value = _value(p, kind, item.get("value"), f"{ipath}/value")
        out.append(Property(kind, name, value))
    return tuple(out)


def _value(p: _Problems, kind: PropertyType, value: Any, path: str) -> PropertyValue:
    if value is None:
        return None
    ok: PropertyValue = None
    match kind:
        case PropertyType.STRING if isinstance(value, str):
            problem = _text_problem(value)
            if problem is not None:
                p.add(path, problem)
                return None
            ok = value
        case PropertyType.BOOLEAN if isinstance(value, bool):
            ok = value
        case PropertyType.INTEGER if isinstance(value, int) and not isinstance(value, bool):
            ok = value
        case PropertyType.DECIMAL if isinstance(value, int | float | str) \
                and not isinstance(value, bool):
            try:
                ok = Decimal(str(value))
            except InvalidOperation:
                ok = None
            if ok is not None and not ok.is_finite():
                ok = None
            elif ok is not None and _plain_digits(ok) > DECIMAL_DIGITS:
                p.add(path, f"a Decimal of at most {DECIMAL_DIGITS} digits written out "
                      f"(xs:decimal has no exponent), found {_plain_digits(ok)}")
                return None
        case PropertyType.DATE if isinstance(value, str):
            try:
                ok = date.fromisoformat(value)
            except ValueError:
                ok = None
        case PropertyType.TIMESTAMP:
            return _datetime(p, value, path)
    if ok is None:
        p.add(path, f"not a valid {kind.value} value: {_kind(value)}")
    return ok


def _plain_digits(value: Decimal) -> int:
    """How many digits `value` has written without an exponent, as the document writes it."""
    digits, exponent = len(value.as_tuple().digits), int(value.as_tuple().exponent)
    return max(digits + exponent, 1) + max(-exponent, 0)


def parse_tmf622_event(payload: Any, usn_path: str, owner: str = "") -> StateChange:
    """A TMF622 ProductOrderStateChangeEvent: the order's state for the usn found at
    `usn_path` (dotted, default event.productOrder.externalId). Where that is a list (v5's
    ExternalIdentifier objects), the usn is the `id` of its one entry, or of the one entry
    whose `owner` is `owner`."""
    p = _Problems()
    payload = _top_object(payload)
    event_id = p.string(payload, "eventId", "", limit=ID_CHARS)
    order = payload.get("event", {}).get("productOrder") if isinstance(
        payload.get("event"), Mapping) else None
    state = None
    if not isinstance(order, Mapping):
        p.add("/event/productOrder", "required object")
    else:
        state = p.string(order, "state", "/event/productOrder")
    node: Any = payload
    for part in usn_path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    usn = None
    where = "/" + usn_path.replace(".", "/")
    if isinstance(node, list):
        node, where = _external_identifier(p, node, where, owner)
    if isinstance(node, int) and not isinstance(node, bool):
        node = str(node)  # a numeric externalId names the usn as its digits
    if isinstance(node, str) and node.strip():
        problem = _text_problem(node, ID_CHARS)
        if problem is None:
            usn = token_value(node)  # as a Smile document carries it
        else:
            p.add(where, problem)
    elif where:
        p.add(where, "required: the subscription's usn")
    p.raise_if_any()
    assert event_id and state and usn
    return StateChange(event_id, usn, "order", state, None, source="tmf622")


def _external_identifier(p: _Problems, entries: list[Any], where: str,
                         owner: str) -> tuple[Any, str]:
    """The `id` of the one ExternalIdentifier that names the usn, and its path; ("", "")
    with the problem added when the list names no one entry."""
    owners = ", ".join("(none)" if e.get("owner") is None else repr(clip(str(e["owner"]), 60))
                       for e in entries[:10] if isinstance(e, Mapping))
    found = f" (owners {owners})" if owners else ""
    picked = [i for i, e in enumerate(entries)
              if isinstance(e, Mapping) and (not owner or e.get("owner") == owner)]
    if len(picked) == 1:
        return entries[picked[0]].get("id"), f"{where}/{picked[0]}/id"
    if not picked and owner:
        p.add(where, f"no external identifier whose owner is {clip(owner, 60)!r}{found}")
    elif not picked:
        p.add(where, "no external identifier: the subscription's usn is required")
    elif owner:
        p.add(where, f"{len(picked)} external identifiers whose owner is {clip(owner, 60)!r}: "
                     "one must name the usn")
    else:
        p.add(where, f"{len(picked)} external identifiers{found}: set "
                     "webhook.tmf622_external_id_owner to the owner whose id is the usn")
    return "", ""
