"""The documents and states the gateway works with: frozen dataclasses and enums, no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

SMILE_NS = "http://xml.inomial.com/smile/2.xsd"


class ProvisionStatus(StrEnum):
    READY_TO_PROVISION = "ReadyToProvision"
    PROVISIONED = "Provisioned"
    DEPROVISIONED = "Deprovisioned"


class SuspendStatus(StrEnum):
    ACTIVE = "Active"
    SUSPENDED = "Suspended"


class ActivateStatus(StrEnum):
    ACTIVATED = "Activated"
    NOT_ACTIVATED = "NotActivated"


class EnableStatus(StrEnum):
    ENABLED = "Enabled"
    NOT_ENABLED = "NotEnabled"


class PropertyType(StrEnum):
    """The typed value elements of an `Object`, named as the XML elements are."""

    STRING = "String"
    BOOLEAN = "Boolean"
    INTEGER = "Integer"
    DECIMAL = "Decimal"
    DATE = "Date"
    TIMESTAMP = "Timestamp"


PropertyValue = str | bool | int | Decimal | date | datetime | None


# XML's whitespace (XML 1.0, 2.3), which an xs:token collapses; a run of it.
_XML_SPACE = " \t\n\r"
_XML_SPACE_RUN = re.compile(r"[ \t\n\r]+")


def token_value(text: str | None) -> str:
    """An xs:token's value (XSD 1.0 Part 2, 4.3.6), as Smile's documents carry usns and
    codes: XML's four whitespace characters collapsed, and only those (U+00A0, U+2028 and
    the rest of Unicode's are part of it)."""
    value = (text or "").strip(_XML_SPACE)
    if "  " in value or "\t" in value or "\n" in value or "\r" in value:
        value = _XML_SPACE_RUN.sub(" ", value)
    return value

@dataclass(frozen=True, slots=True)
class Property:
    """One typed custom field; `value is None` is Smile's empty element ("no value")."""

    type: PropertyType
    name: str
    value: PropertyValue


@dataclass(frozen=True, slots=True)
class Statuses:
    """Smile's four independent status flags."""

    provision: ProvisionStatus
    suspend: SuspendStatus
    activate: ActivateStatus
    enable: EnableStatus

    def as_dict(self) -> dict[str, str]:
        provision, suspend, activate, enable = self.values()
        return {"provision": provision, "suspend": suspend, "activate": activate,
                "enable": enable}

    def values(self) -> tuple[str, str, str, str]:
        # _value_, not .value: the property costs ten times the attribute (on every request)
        return (self.provision._value_, self.suspend._value_, self.activate._value_,
                self.enable._value_)


@dataclass(frozen=True, slots=True)
class Cycle:
    cycle_type: str
    cycle_day: int


@dataclass(frozen=True, slots=True)
class KeyedText:
    key: str
    text: str


@dataclass(frozen=True, slots=True)
class Subscription:
    usn: str
    sid: int
    service_name: str
    parent: str
    properties: tuple[Property, ...]
    statuses: Statuses
    # Optional children some documents carry after EnableStatus. AccessoryDataList's content is
    # undocumented: it is kept as the canonical XML of the element, so it survives a round trip.
    accessory_data_list: str | None = None
    invoicing_cycle: Cycle | None = None
    rating_cycle: Cycle | None = None
    timezone: KeyedText | None = None
    cost_centre: KeyedText | None = None


@dataclass(frozen=True, slots=True)
class Feature:
    feature_id: int
    name: str
    properties: tuple[Property, ...] = ()


@dataclass(frozen=True, slots=True)
class PlanScheduleItem:
    plan_code: str
    plan_schedule_type: int = 1
    start: datetime | None = None


@dataclass(frozen=True, slots=True)
class SubscriptionFeaturesUpdate:
    """Body of SubscriptionReadyToProvision, SubscriptionProvisioned, SubscriptionActivated, ..."""

    subscription: Subscription
    features: tuple[Feature, ...] = ()
    plans: tuple[PlanScheduleItem, ...] = field(default=())

    def with_statuses(self, statuses: Statuses) -> SubscriptionFeaturesUpdate:
        return replace(self, subscription=replace(self.subscription, statuses=statuses))

    def feature_ids(self) -> frozenset[int]:
        return frozenset(f.feature_id for f in self.features)


@dataclass(frozen=True, slots=True)
class SubscriptionUpdated:
    """Body of SubscriptionClosed and SubscriptionUpdated: one Subscription."""

    subscription: Subscription


@dataclass(frozen=True, slots=True)
class SubscriptionProvisionResponse:
    """How a provisioning system reports back to Smile after SubscriptionReadyToProvision."""

    provision_request_id: int
    status: str
    message: str | None = None


Document = SubscriptionFeaturesUpdate | SubscriptionUpdated | SubscriptionProvisionResponse


def subscription_of(document: Document) -> Subscription | None:
    """The subscription a document is about, if its body carries one."""
    if isinstance(document, SubscriptionProvisionResponse):
        return None
    return document.subscription


@dataclass(frozen=True, slots=True)
class DocumentOutline:
    """What the inbound path needs of a validated document: its body, the subscription's
    identity and flags, its FeatureIds, and a provisioning response's fields.

    The codec reads it without building the whole model (properties, cycles, plans), which
    cost as much as parsing and validating the document; `Codec.decode` reads the rest when a
    use case needs it. For a SubscriptionProvisionResponse, usn, sid and statuses are None.
    """

    body: type[SubscriptionFeaturesUpdate | SubscriptionUpdated | SubscriptionProvisionResponse]
    usn: str | None = None
    sid: int | None = None
    statuses: Statuses | None = None
    feature_ids: frozenset[int] = frozenset()  # empty for a body without features
    provision_request_id: int | None = None
    status: str | None = None


def outline_of(document: Document) -> DocumentOutline:
    """The outline of a whole document (what `Codec.outline` reads of its XML)."""
    if isinstance(document, SubscriptionProvisionResponse):
        return DocumentOutline(SubscriptionProvisionResponse,
                               provision_request_id=document.provision_request_id,
                               status=document.status)
    sub = document.subscription
    if isinstance(document, SubscriptionFeaturesUpdate):
        return DocumentOutline(SubscriptionFeaturesUpdate, sub.usn, sub.sid, sub.statuses,
                               document.feature_ids())
    return DocumentOutline(SubscriptionUpdated, sub.usn, sub.sid, sub.statuses)


@dataclass(frozen=True, slots=True)
class MessageType:
    """A Smile message: its `smileMessageType`, the body it carries, the headers it must have."""

    name: str
    body: type[SubscriptionFeaturesUpdate | SubscriptionUpdated | SubscriptionProvisionResponse]
    headers: tuple[str, ...]


_FU = SubscriptionFeaturesUpdate
_SUB = ("sid", "usn")
MESSAGE_TYPES: dict[str, MessageType] = {
    m.name: m for m in (
        MessageType("SubscriptionReadyToProvision", _FU, (*_SUB, "provisionRequestId")),
        MessageType("SubscriptionProvisioned", _FU, (*_SUB, "provisionRequestId")),
        MessageType("SubscriptionProvisionCommand", _FU, (*_SUB, "command", "commandID")),
        MessageType("SubscriptionFeaturesChanged", _FU, _SUB),
        MessageType("SubscriptionEnabled", _FU, _SUB),
        MessageType("SubscriptionActivated", _FU, _SUB),
        MessageType("SubscriptionSuspended", _FU, _SUB),
        MessageType("SubscriptionResumed", _FU, _SUB),
        MessageType("SubscriptionClosed", SubscriptionUpdated, _SUB),
        MessageType("SubscriptionUpdated", SubscriptionUpdated, _SUB),
        MessageType("SubscriptionProvisionResponse", SubscriptionProvisionResponse,
                    ("provisionRequestId",)),
    )
}
# Header values that are integers in Smile's documentation; the rest are strings.
INTEGER_HEADERS = frozenset({"sid", "provisionRequestId", "commandID"})
# The schema's bounded integers: xs:long (SID, provisionRequestId, FeatureId) and xs:int
# (PlanScheduleType, CycleDay). A number outside them fits no document and no store column.
LONG_RANGE = (-2**63, 2**63 - 1)
INT_RANGE = (-2**31, 2**31 - 1)
