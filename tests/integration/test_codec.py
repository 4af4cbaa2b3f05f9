"""SmileXmlCodec against xsd/smile-2.xsd, the samples and the faulty fixtures."""

from __future__ import annotations

import copy
import random
import re
import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
import xmlschema
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from lxml import etree

from adapters.smile_xml import FRIENDLY_PATTERNS, SmileXmlCodec
from gateway import domain
from gateway.domain import (
    Feature,
    PlanScheduleItem,
    Property,
    PropertyType,
    Statuses,
    Subscription,
    SubscriptionFeaturesUpdate,
    SubscriptionProvisionResponse,
    SubscriptionUpdated,
    outline_of,
)
from gateway.errors import DocumentInvalidError, DocumentParseError
from tests.conftest import GRIN, GRIN_JAVA, INVALID, SAMPLES, XSD

SAMPLE_FILES = sorted(SAMPLES.glob("*.xml"))

# Every invalid fixture, with the place and the words its first violation must name.
EXPECTED = {
    "boolean-property-not-true-false.xml": (11, "/Properties/Object/Boolean[1]", "expected true, false"),
    "date-property-not-a-date.xml": (13, "/Properties/Object/Date", "'1980-02-30'"),
    "elements-out-of-order.xml": (4, "/Subscription/SID", "Expected is ( USN )"),
    "empty-file.xml": (1, "", "Document is empty"),
    "empty-usn.xml": (4, "/Subscription/USN", "minimum length"),
    "entity-expansion-bomb.xml": (2, "", "DOCTYPE is not allowed"),
    "external-dtd.xml": (2, "", "DOCTYPE is not allowed"),
    "feature-id-not-integer.xml": (22, "/ActiveFeatures/Feature/FeatureId", "'F-1'"),
    "missing-plan-schedule-item.xml": (21, "/PlanScheduleItems", "Expected is ( PlanScheduleItem )"),
    "missing-usn.xml": (4, "/Subscription/SID", "Expected is ( USN )"),
    "nested-too-deep.xml": (12, "", "not well-formed: elements nested more than 256 levels deep"),
    "not-utf8.xml": (6, "", "Invalid bytes in character encoding"),
    "oversize.xml": (1, "", "over the limit of 1048576"),
    "prefixed-sid-not-integer.xml": (7, "/SubscriptionFeaturesUpdate/Subscription/SID", "'S175' is not a valid value of the atomic type 'xs:long'"),
    "property-without-name.xml": (10, "/Properties/Object/String", "attribute 'name' is required"),
    "response-request-id-not-integer.xml": (3, "/SubscriptionProvisionResponse/provisionRequestId", "'abc'"),
    "response-without-status.xml": (4, "/SubscriptionProvisionResponse/message", "Expected is ( status )"),
    "schema-location-hint-ignored.xml": (7, "/Subscription/SID", "'one-seventy'"),
    "several-violations.xml": (5, "/Subscription/SID", "'x' is not a valid value"),
    "sid-not-integer.xml": (5, "/SubscriptionFeaturesUpdate/Subscription/SID", "'S170' is not a valid value of the atomic type 'xs:long'"),
    "start-not-a-datetime.xml": (25, "/PlanScheduleItem/Start", "expected a dateTime with a UTC offset"),
    "start-without-offset.xml": (25, "/PlanScheduleItem/Start", "'2012-08-08T00:00:00.000' has no UTC offset"),
    "truncated.xml": (14, "", "not well-formed"),
    "unknown-element.xml": (19, "/Subscription/Colour", "Expected is one of ( AccessoryDataList"),
    "unknown-provision-status.xml": (15, "/Subscription/ProvisionStatus", "'ReadyToProvison' is not an element of the set"),
    "wrong-namespace.xml": (2, "/SubscriptionFeaturesUpdate", "in namespace http://xml.inomial.com/smile/2.xsd"),
    "wrong-root-element.xml": (2, "/SubscriptionFeatureUpdate", "expected a root element"),
    "xxe-external-entity.xml": (2, "", "DOCTYPE is not allowed"),
}


def canonical(data: bytes) -> str:
    return etree.canonicalize(etree.fromstring(data), strip_text=True)


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name)
def test_every_sample_is_valid_and_round_trips_byte_for_byte(codec: SmileXmlCodec, path) -> None:
    data = path.read_bytes()
    assert codec.check(data) == []
    document = codec.decode(data)
    rendered = codec.encode(document)
    assert codec.decode(rendered) == document
    assert canonical(rendered) == canonical(data)
    assert rendered == data


def test_there_is_a_sample_for_every_features_update_type_and_the_other_bodies() -> None:
    names = {p.stem for p in SAMPLE_FILES}
    wanted = {n for n, t in domain.MESSAGE_TYPES.items() if n != "SubscriptionUpdated"}
    assert wanted <= names


def test_the_seed_example_decodes_to_its_documented_values(codec: SmileXmlCodec) -> None:
    doc = codec.decode((SAMPLES / "SubscriptionReadyToProvision.xml").read_bytes())
    assert isinstance(doc, SubscriptionFeaturesUpdate)
    sub = doc.subscription
    assert (sub.usn, sub.sid, sub.parent) == ("2142426762", 170, "1000000008")
    assert sub.statuses.as_dict() == {"provision": "ReadyToProvision", "suspend": "Active",
                                      "activate": "Activated", "enable": "NotEnabled"}
    assert sub.properties[1] == Property(PropertyType.BOOLEAN, "billPrintName", False)
    assert doc.features == ()
    assert doc.plans[0].start == datetime(2012, 8, 8, tzinfo=timezone(timedelta(hours=10)))


def test_property_values_become_python_types_and_empty_means_none(codec: SmileXmlCodec) -> None:
    doc = codec.decode((SAMPLES / "SubscriptionProvisioned.xml").read_bytes())
    assert isinstance(doc, SubscriptionFeaturesUpdate)
    values = {p.name: p.value for p in doc.subscription.properties}
    assert values == {"username": "ann@example.net", "abn": None, "vlan": 2101, "dob": None}
    assert doc.subscription.usn == "058554"  # a string: the leading zero stays
    cmd = codec.decode((SAMPLES / "SubscriptionProvisionCommand.xml").read_bytes())
    assert isinstance(cmd, SubscriptionFeaturesUpdate)
    assert cmd.subscription.properties[1].value == date(2024, 3, 1)
    assert cmd.features[0].properties[0].value == Decimal("15.50")


@pytest.mark.parametrize("path", sorted(INVALID.glob("*.xml")), ids=lambda p: p.name)
def test_every_invalid_fixture_is_refused_with_a_located_error(codec: SmileXmlCodec, path) -> None:
    assert path.name in EXPECTED, f"add {path.name} to EXPECTED with what it must report"
    line, where, words = EXPECTED[path.name]
    data = path.read_bytes()
    found = codec.check(data)
    assert found, f"{path.name} was accepted"
    first = found[0]
    assert first.line == line
    assert first.column >= 1
    assert first.path.endswith(where)
    assert words in first.message
    with pytest.raises((DocumentParseError, DocumentInvalidError)) as caught:
        codec.decode(data)
    assert caught.value.violations == tuple(found)


def test_there_are_at_least_fifteen_invalid_fixtures_each_named_in_the_table() -> None:
    names = {p.name for p in INVALID.glob("*.xml")}
    assert len(names) >= 15
    assert names == set(EXPECTED)


def test_every_violation_is_reported_not_only_the_first(codec: SmileXmlCodec) -> None:
    found = codec.check((INVALID / "several-violations.xml").read_bytes())
    assert [(v.line, v.path.rsplit("/", 1)[-1]) for v in found] == [
        (5, "SID"), (18, "EnableStatus"), (24, "PlanScheduleType")]
    assert all(v.column == 5 or v.column == 7 for v in found)


def test_an_external_entity_never_reads_the_local_file(codec: SmileXmlCodec) -> None:
    data = (INVALID / "xxe-external-entity.xml").read_bytes()
    with pytest.raises(DocumentParseError) as caught:
        codec.decode(data)
    assert "root:" not in str(caught.value)
    assert all("root:" not in v.message for v in caught.value.violations)


def test_a_doctype_in_utf16_is_refused_after_parsing(codec: SmileXmlCodec) -> None:
    data = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>'
    found = codec.check(data.encode("utf-16"))
    assert found and "DOCTYPE" in found[0].message


def test_a_doctype_in_utf16_is_refused_by_decode_too(codec: SmileXmlCodec) -> None:
    data = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>'
    with pytest.raises(DocumentParseError, match="DOCTYPE"):
        codec.decode(data.encode("utf-16"))


def _mutants(count: int) -> list[bytes]:
    """Samples with texts replaced, elements dropped or doubled, attributes changed."""
    rng = random.Random(622)
    values = ["", " ", "abc", "-1", "0", "99999999999999999999", "true", "2024-13-01",
              "2024-05-01T24:00:00Z", "2024-05-01T00:00:00", " Provisioned ", "1.5", "x" * 300]
    parser = etree.XMLParser(remove_comments=True, resolve_entities=False, no_network=True)
    out = []
    for _ in range(count):
        root = etree.fromstring(rng.choice(SAMPLE_FILES).read_bytes(), parser)
        for _ in range(rng.randint(1, 3)):
            element = rng.choice(list(root.iter()))
            parent = element.getparent()
            choice = rng.random()
            if choice < 0.4 or parent is None:
                element.text = rng.choice(values)
            elif choice < 0.6:
                parent.remove(element)
            elif choice < 0.8:
                parent.insert(rng.randint(0, len(parent)), copy.deepcopy(element))
            else:
                element.set(rng.choice(["name", "key", "other"]), rng.choice(values))
        out.append(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
    return out


def test_decode_validating_while_parsing_agrees_with_check(codec: SmileXmlCodec) -> None:
    # decode validates in one pass as libxml2 parses; check parses, then validates the tree
    refused = 0
    for data in _mutants(300):
        found = codec.check(data)
        try:
            codec.decode(data)
        except DocumentInvalidError as exc:
            if found:
                assert exc.violations == tuple(found)
                refused += 1
            else:  # valid by the schema, but a value Python cannot hold
                assert "out of range" in str(exc)
        else:
            assert not found, data
    assert refused > 100  # the mutants exercise the refusing side too


def test_the_outline_refuses_and_reads_what_the_whole_read_does(codec: SmileXmlCodec) -> None:
    # outline reads a few elements only; it must refuse the same documents, with the same
    # violations, and agree with the whole read on what it reads
    refused = out_of_range = 0
    for data in _mutants(300):
        try:
            document = codec.decode(data)
        except DocumentInvalidError as exc:
            with pytest.raises(DocumentInvalidError) as caught:
                codec.outline(data)
            assert caught.value.violations == exc.violations, data
            refused += 1
            out_of_range += "out of range" in str(exc)
        else:
            assert codec.outline(data) == outline_of(document), data
    assert refused > 100 and out_of_range > 0


def test_a_schema_location_hint_in_a_document_is_never_followed(codec: SmileXmlCodec) -> None:
    # The hint names tests/data/invalid/permissive.xsd, which would accept the document.
    found = codec.check((INVALID / "schema-location-hint-ignored.xml").read_bytes())
    assert [v.path for v in found] == ["/SubscriptionFeaturesUpdate/Subscription/SID"]


def test_a_value_xsd_accepts_but_python_cannot_hold_is_a_located_violation(
        codec: SmileXmlCodec) -> None:
    data = (SAMPLES / "SubscriptionReadyToProvision.xml").read_bytes().replace(
        b"2012-08-08T00:00:00.000+10:00", b"2012-08-08T24:00:00.000+10:00")
    for read in (codec.decode, codec.outline):
        with pytest.raises(DocumentInvalidError) as caught:
            read(data)
        assert caught.value.violations[0].path.endswith("/PlanScheduleItem/Start")


@pytest.mark.parametrize("where", ["Properties", "ActiveFeatures"])
@pytest.mark.parametrize("value", [b"10000-01-01T00:00:00Z", b"2024-05-01T24:00:00Z"])
def test_a_timestamp_python_cannot_hold_is_refused_by_the_outline_too(
        codec: SmileXmlCodec, where: str, value: bytes) -> None:
    data = (SAMPLES / "SubscriptionFeaturesChanged.xml").read_bytes()
    timestamp = b'<Timestamp name="installed">' + value + b"</Timestamp>"
    if where == "Properties":
        data = data.replace(b"<Boolean name", timestamp + b"<Boolean name", 1)
    else:
        data = data.replace(b'<Integer name="dataGb">', timestamp + b'<Integer name="dataGb">')
    assert codec.check(data) == []  # the schema takes it; Python's datetime cannot hold it
    for read in (codec.decode, codec.outline):
        with pytest.raises(DocumentInvalidError) as caught:
            read(data)
        assert "/Object/Timestamp" in caught.value.violations[0].path, read
        assert "out of range" in caught.value.violations[0].message


def test_status_enumerations_in_the_schema_match_the_domain_enums() -> None:
    tree = etree.parse(str(XSD))
    for type_name, enum in (("ProvisionStatusType", domain.ProvisionStatus),
                            ("SuspendStatusType", domain.SuspendStatus),
                            ("ActivateStatusType", domain.ActivateStatus),
                            ("EnableStatusType", domain.EnableStatus)):
        values = tree.xpath(f"//xs:simpleType[@name='{type_name}']//xs:enumeration/@value",
                            namespaces=_XS)
        assert values == [e.value for e in enum], type_name


_XS = {"xs": "http://www.w3.org/2001/XMLSchema"}
_FIRST_PATTERN = ".+(Z|[+\\-]\\d\\d:\\d\\d)"  # OffsetDateTime's, before it was spelled out


def _field(low: int, high: int) -> st.SearchStrategy[str]:
    """Two digits, in range three times in four; else out of it, or not two digits."""
    valid = st.integers(low, high).map("{:02d}".format)
    odd = st.sampled_from(["00", "60", "99", "1", "123", "\u0660\u0661"])  # Arabic-Indic digits
    return st.one_of(valid, valid, valid, odd)


_WELL_FORMED = st.builds(
    "{}{}-{}-{}{}{}:{}:{}{}{}".format,
    st.sampled_from(["", "", "-"]),
    st.sampled_from(["2024", "2024", "0001", "0000", "12024", "02024", "999", "9999"]),
    _field(1, 12), _field(1, 28), st.sampled_from(["T", "T", "T", "t", " "]), _field(0, 23),
    _field(0, 59), _field(0, 59),
    st.sampled_from(["", ".5", ".000", ".123456789", "."]),
    st.sampled_from(["", "Z", "+10:00", "-00:00", "+14:00", "-14:00", "+14:01", "z", "+1000",
                     "+10", "Z+10:00", "+10:00Z"]))


def _mutated(value: str, where: int, what: str) -> str:
    where %= len(value) + 1
    return value[:where] + what + value[where + 1:] if what != "\0" else value[:where]


_DATETIMES = st.one_of(
    _WELL_FORMED,
    st.builds(_mutated, _WELL_FORMED, st.integers(0, 40), st.sampled_from(list("0-:.TZ+ x\0"))),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=35),
).map(lambda value: value if len(value) % 7 else f" {value}\t")  # collapsed before the facets


_SAMPLE = (SAMPLES / "SubscriptionFeaturesChanged.xml").read_bytes()


@pytest.fixture(scope="module")
def first_spelling(tmp_path_factory: pytest.TempPathFactory) -> SmileXmlCodec:
    """The schema as it was before OffsetDateTime's pattern was spelled out."""
    tree = etree.parse(str(XSD))
    [pattern] = tree.xpath("//xs:simpleType[@name='OffsetDateTime']//xs:pattern",
                           namespaces=_XS)
    pattern.set("value", _FIRST_PATTERN)
    path = tmp_path_factory.mktemp("xsd") / "first-spelling.xsd"
    tree.write(str(path))
    return SmileXmlCodec(path)


def test_every_pattern_in_the_schema_has_words_for_its_refusal() -> None:
    patterns = etree.parse(str(XSD)).xpath("//xs:pattern/@value", namespaces=_XS)
    assert patterns and set(patterns) == set(FRIENDLY_PATTERNS)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_DATETIMES)
@example(value="12024-04-01T00:00:00+10:00")  # xs:dateTime's corners, each tried every run
@example(value="-2024-04-01T00:00:00.5-00:00")
@example(value="2024-04-01T24:00:00Z")
@example(value=" 2024-04-01T00:00:00.123456789+14:00\t")
@example(value="2024-04-01T00:00:00")
@example(value="2024-04-01T00:00:00.000")
@example(value="2024-04-01T00:00:00+1000")
def test_the_offset_pattern_takes_exactly_what_its_first_spelling_took(
        codec: SmileXmlCodec, first_spelling: SmileXmlCodec, value: str) -> None:
    """The spelled-out OffsetDateTime pattern (quicker for libxml2) accepts the values its
    first spelling accepted, and only those, on a plan's Start and on a Timestamp value."""
    start = (b"<Start>2024-04-01T00:00:00.000+10:00</Start>",
             b"<Start>" + value.encode() + b"</Start>")
    stamp = (b'<Timestamp name="since">2024-05-01T00:00:00.000+10:00</Timestamp>',
             b'<Timestamp name="since">' + value.encode() + b"</Timestamp>")
    for old, new in (start, stamp):
        data = _SAMPLE.replace(old, new, 1)
        assert data != _SAMPLE
        assert (codec.check(data) == []) == (first_spelling.check(data) == [])


def test_the_schema_loads_in_xmlschema_and_agrees_on_the_fixtures() -> None:
    schema = xmlschema.XMLSchema(str(XSD))
    for path in SAMPLE_FILES:
        schema.validate(str(path))
    for name in ("sid-not-integer.xml", "unknown-provision-status.xml",
                 "start-without-offset.xml", "property-without-name.xml"):
        assert not schema.is_valid(str(INVALID / name)), name


def test_the_schema_loads_in_xmllint() -> None:
    xmllint = shutil.which("xmllint")
    if xmllint is None:
        pytest.fail("xmllint is missing: `make test` installs libxml2-utils")
    ok = subprocess.run([xmllint, "--noout", "--nonet", "--schema", str(XSD),
                         *map(str, SAMPLE_FILES)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([xmllint, "--noout", "--nonet", "--schema", str(XSD),
                          str(INVALID / "sid-not-integer.xml")], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 3 and "SID" in bad.stderr


def test_rendering_an_invalid_model_is_refused(codec: SmileXmlCodec) -> None:
    bad = SubscriptionProvisionResponse(1, "   ")
    with pytest.raises(DocumentInvalidError):
        codec.encode(bad)


def test_rendering_is_deterministic_with_a_double_quoted_declaration(codec: SmileXmlCodec) -> None:
    doc = codec.decode((SAMPLES / "SubscriptionClosed.xml").read_bytes())
    assert isinstance(doc, SubscriptionUpdated)
    first, second = codec.encode(doc), codec.encode(doc)
    assert first == second
    assert first.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<SubscriptionUpdated ')


# -- generated documents: parse(build(x)) == x -------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20)
# what XSD keeps in a token: no XML whitespace at its ends (Unicode's other spaces may be)
_token = st.from_regex(r"[A-Za-z0-9\u00a0\u2028][A-Za-z0-9_.@\u00a0\u3000-]{0,15}", fullmatch=True)
_moment = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1),
                       timezones=st.sampled_from([UTC, timezone(timedelta(hours=10)),
                                                  timezone(timedelta(hours=-5, minutes=-30))]))
_ms = _moment.map(lambda d: d.replace(microsecond=(d.microsecond // 1000) * 1000))
_value = st.one_of(
    st.tuples(st.just(PropertyType.STRING), st.one_of(st.none(), _text)),
    st.tuples(st.just(PropertyType.BOOLEAN), st.one_of(st.none(), st.booleans())),
    st.tuples(st.just(PropertyType.INTEGER), st.one_of(st.none(), st.integers(-10**12, 10**12))),
    st.tuples(st.just(PropertyType.DECIMAL), st.one_of(st.none(), st.decimals(
        allow_nan=False, allow_infinity=False, places=3, min_value=-10**6, max_value=10**6))),
    st.tuples(st.just(PropertyType.DATE), st.one_of(st.none(), st.dates(date(1900, 1, 1)))),
    st.tuples(st.just(PropertyType.TIMESTAMP), st.one_of(st.none(), _ms)),
)
_props = st.lists(st.builds(lambda n, tv: Property(tv[0], n, tv[1]), _token, _value),
                  max_size=4).map(tuple)
_statuses = st.builds(Statuses, st.sampled_from(domain.ProvisionStatus),
                      st.sampled_from(domain.SuspendStatus), st.sampled_from(domain.ActivateStatus),
                      st.sampled_from(domain.EnableStatus))
_subscription = st.builds(Subscription, usn=_token, sid=st.integers(0, 2**62),
                          service_name=_text, parent=_token, properties=_props,
                          statuses=_statuses)
_documents = st.one_of(
    st.builds(SubscriptionFeaturesUpdate, _subscription,
              st.lists(st.builds(Feature, st.integers(0, 10**9), _text, _props),
                       max_size=3).map(tuple),
              st.lists(st.builds(PlanScheduleItem, _token, st.integers(0, 9),
                                 st.one_of(st.none(), _ms)), min_size=1, max_size=3).map(tuple)),
    st.builds(SubscriptionUpdated, _subscription),
    st.builds(SubscriptionProvisionResponse, st.integers(0, 2**62), _token,
              st.one_of(st.none(), _text)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents)
def test_any_document_survives_a_round_trip(codec: SmileXmlCodec, document) -> None:
    data = codec.encode(document)
    assert codec.decode(data) == document
    assert codec.outline(data) == outline_of(document)


def test_a_violation_under_a_prefix_declared_inside_the_document_is_located(codec) -> None:
    """libxml2 names a violation's place with the document's own prefixes, wherever they
    are declared (here on the element itself), and one prefix bound twice."""
    text = (INVALID / "sid-not-integer.xml").read_text("utf-8").replace(
        "<SID>S170</SID>", f'<s:SID xmlns:s="{domain.SMILE_NS}">S170</s:SID>').replace(
        "<ServiceName>", '<s:ServiceName xmlns:s="urn:other">').replace(
        "</ServiceName>", "</s:ServiceName>")
    found = codec.check(text.encode())
    assert [(v.line, v.path) for v in found][:1] == [
        (5, "/SubscriptionFeaturesUpdate/Subscription/SID")]
    assert all(v.line for v in found)


_ACTIVATED = (SAMPLES / "SubscriptionActivated.xml").read_bytes()
_STRING = b'<String name="username"'
_NS_BOUND = b'xmlns:s="http://xml.inomial.com/smile/2.xsd"'


@pytest.mark.parametrize("data", [
    _ACTIVATED.replace(_STRING, b'<String p:name="username"'),  # a prefix bound nowhere
    _ACTIVATED.replace(_STRING, b'<String xmlns:q="" name="username"'),
    _ACTIVATED.replace(_STRING, b'<String xmlns:xml="urn:x" name="username"'),
    _ACTIVATED.replace(_STRING, b'<String xmlns:xmlns="urn:x" name="username"'),
    _ACTIVATED.replace(_STRING, b'<String xmlns:q="http://www.w3.org/2000/xmlns/" name="username"'),
    _ACTIVATED.replace(b"</EnableStatus>", b"</EnableStatus><AccessoryDataList><s:X "
                       + _NS_BOUND + b' q:y="1"/></AccessoryDataList>'),
    _ACTIVATED.replace(b"</EnableStatus>", b"</EnableStatus><AccessoryDataList><s:X:Y "
                       + _NS_BOUND + b"/></AccessoryDataList>"),
    _ACTIVATED.replace(b"<Subscription>", b"<?a:b c?><Subscription>"),
], ids=["undefined-prefix", "empty-binding", "xml-rebound", "xmlns-bound", "xmlns-uri",
        "accessory-undefined-prefix", "accessory-qname", "pi-with-colon"])
def test_a_document_that_breaks_the_namespace_rules_is_refused_as_validate_refuses_it(
        codec, data) -> None:
    """libxml2 reports a broken namespace rule (XML Namespaces 1.0) as an error it goes on
    after, and validating while it parses it kept no word of it: the webhook and the consumer
    took documents that validate called not well-formed, and some then failed to read back."""
    [expected] = codec.check(data)
    assert expected.message.startswith("not well-formed")
    for read in (codec.outline, codec.decode):
        with pytest.raises(DocumentParseError) as refused:
            read(data)
        assert refused.value.violations[0] == expected


def test_a_broken_namespace_rule_is_refused_whatever_the_schema_lets_through(tmp_path) -> None:
    """A schema of the deployment's own may let prefixed names through anywhere: a broken
    namespace rule is refused whatever the schema in use."""
    permissive = SmileXmlCodec(INVALID / "permissive.xsd")  # its root holds anything
    data = (b'<SubscriptionFeaturesUpdate xmlns="http://xml.inomial.com/smile/2.xsd">'
            b'<x p:y="1"/></SubscriptionFeaturesUpdate>')
    [expected] = permissive.check(data)
    assert expected.message.startswith("not well-formed: Namespace prefix p")
    with pytest.raises(DocumentParseError):
        permissive.outline(data)
    # a schema that takes any attribute on an element: a prefix bound nowhere is still refused
    text = XSD.read_text("utf-8").replace(
        '<xs:attribute name="key" type="xs:string" use="required"/>',
        '<xs:attribute name="key" type="xs:string" use="required"/><xs:anyAttribute/>')
    assert "anyAttribute" in text
    (tmp_path / "any.xsd").write_text(text, "utf-8")
    anything = SmileXmlCodec(tmp_path / "any.xsd")
    assert anything.check(_ACTIVATED) == []
    assert anything.outline(_ACTIVATED) == SmileXmlCodec(XSD).outline(_ACTIVATED)
    timezone = _ACTIVATED.replace(b"</EnableStatus>",
                                  b'</EnableStatus><Timezone key="k" p:q="1">AEST</Timezone>')
    with pytest.raises(DocumentParseError):
        anything.outline(timezone)


@pytest.mark.parametrize("content", [
    b"<AccessoryDataList/>",
    b"<AccessoryDataList>\n  <Item><Name> x </Name></Item>\n</AccessoryDataList>",
    b'<AccessoryDataList><s:Item xmlns:s="http://xml.inomial.com/smile/2.xsd" xmlns:p="urn:p"'
    b' p:a="1">&#x1F600;&amp;&lt;<![CDATA[<c>]]></s:Item><!-- c --></AccessoryDataList>',
], ids=["empty", "elements", "prefixed"])
def test_a_subscription_with_accessory_data_reads_and_renders(codec, content) -> None:
    """AccessoryDataList's content is kept as its canonical XML; reading it failed for every
    document that carried one (its namespace is declared on the root, out of the element's
    own scope): the snapshot could not be read back, nor an order event rendered."""
    data = _ACTIVATED.replace(b"</EnableStatus>", b"</EnableStatus>" + content)
    document = codec.decode(data)
    accessory = document.subscription.accessory_data_list
    assert accessory is not None and accessory.startswith("<AccessoryDataList")
    rendered = codec.encode(document)
    assert codec.decode(rendered) == document
    assert canonical(data) == canonical(rendered)


_NBSP = "\u00a0"


@pytest.mark.parametrize("text, value", [
    ("  2142426765 \t", "2142426765"),  # XML's own whitespace: collapsed, as XSD reads a token
    ("2142\n  426765", "2142 426765"),
    (f"2142426765{_NBSP}", f"2142426765{_NBSP}"),  # no XML whitespace: part of the value
    ("\u2028", "\u2028"),
    ("\u0085 N-1 \u3000", "\u0085 N-1 \u3000"),
])
def test_a_token_is_read_as_the_schema_reads_it(codec, text, value) -> None:
    """xs:token collapses XML's four whitespace characters only; Python's strip() took
    Unicode's too (U+00A0, U+2028, U+0085, U+3000): a value of them alone became empty, which
    the gateway then could not render, and a usn ending in U+00A0 became another's."""
    esc = text.encode("utf-8")
    data = (_ACTIVATED.replace(b"<USN>2142426765</USN>", b"<USN>" + esc + b"</USN>")
            .replace(b"<Parent>1000000051</Parent>", b"<Parent>" + esc + b"</Parent>")
            .replace(b"<PlanCode>hbb50v</PlanCode>", b"<PlanCode>" + esc + b"</PlanCode>")
            .replace(b'<String name="username">', b'<String name="' + esc.replace(b"\n", b"&#10;")
                     .replace(b"\t", b"&#9;") + b'">'))
    assert codec.check(data) == []
    document = codec.decode(data)
    sub = document.subscription
    assert (sub.usn, sub.parent, document.plans[0].plan_code) == (value, value, value)
    assert codec.outline(data).usn == value
    assert codec.decode(codec.encode(document)) == document
    response = (SAMPLES / "SubscriptionProvisionResponse.xml").read_bytes()
    status = re.sub(rb"<status>[^<]*</status>", b"<status>" + esc + b"</status>", response)
    assert codec.decode(status).status == value


def test_error_messages_name_local_names_not_expanded_ones(codec: SmileXmlCodec) -> None:
    found = codec.check((INVALID / "boolean-property-not-true-false.xml").read_bytes())
    assert not re.search(r"\{http://xml\.inomial\.com/smile/2\.xsd\}", found[0].message)


DOC_TEXT = (SAMPLES / "SubscriptionActivated.xml").read_text("utf-8").replace(
    "Home broadband", "Café broadband")


BARE_DECLARATION = DOC_TEXT.replace(' encoding="UTF-8"', "")


@pytest.mark.parametrize("data, expected", [
    (DOC_TEXT.replace('encoding="UTF-8"', "encoding='iso-8859-1'").encode("latin-1"), DOC_TEXT),
    (DOC_TEXT.replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16"), DOC_TEXT),
    (BARE_DECLARATION.encode("utf-16"), BARE_DECLARATION),  # a byte order mark says UTF-16
    (DOC_TEXT.encode("utf-8-sig"), DOC_TEXT)])  # UTF-8 with a byte order mark
def test_a_document_in_another_encoding_is_written_in_utf8_saying_so(
        codec, data, expected) -> None:
    assert codec.utf8(data) == expected.encode("utf-8")
    assert codec.decode(codec.utf8(data)) == codec.decode(data)


def test_a_utf8_document_is_handed_back_as_it_is(codec) -> None:
    data = DOC_TEXT.encode("utf-8")
    assert codec.utf8(data) is data
    bare = data.split(b"?>", 1)[1].lstrip()  # no declaration at all
    assert codec.utf8(bare) is bare


# ActiveMQ keeps a JMS TextMessage's text in Java's own UTF-8 ("modified UTF-8"): a character
# beyond U+FFFF is two UTF-16 halves of three bytes each (CESU-8), and a JMS client's getText()
# fails on UTF-8's four-byte form (UTFDataFormatException). Both measured on Debian's
# ActiveMQ 5.17 (test_stomp_broker.py takes them through the broker).


def _four_byte_characters(data: bytes) -> list[bytes]:
    return re.findall(rb"[\xf0-\xf4][\x80-\xbf]{3}", data)


def test_a_rendered_document_writes_characters_beyond_u_ffff_as_references(codec) -> None:
    document = codec.decode((SAMPLES / "SubscriptionActivated.xml").read_bytes())
    sub = document.subscription
    document = replace(document, subscription=replace(
        sub, service_name=f"Home {GRIN} broadband",
        properties=(Property(PropertyType.STRING, "username", f"kim{GRIN}"),)))
    data = codec.encode(document)
    assert _four_byte_characters(data) == []
    assert b"<ServiceName>Home &#x1F600; broadband</ServiceName>" in data
    assert b'<String name="username">kim&#x1F600;</String>' in data
    assert codec.decode(data) == document
    assert "Café".encode() in codec.encode(replace(document, subscription=replace(
        sub, service_name="Café")))  # the rest of Unicode stays UTF-8


def test_a_document_for_the_bus_writes_characters_beyond_u_ffff_as_references(codec) -> None:
    text = DOC_TEXT.replace("Café broadband", f"Café {GRIN} broadband").replace(
        '<String name="username">kim@example.org</String>',
        f'<String name="u{GRIN}" >kim<![CDATA[<{GRIN}>{GRIN}]]>@example.org</String>'
        f"<!-- {GRIN} -->")
    data = text.encode("utf-8")
    sent = codec.text_message(data)
    assert _four_byte_characters(sent) == []
    assert b"<ServiceName>Caf\xc3\xa9 &#x1F600; broadband" in sent
    # an attribute's value, a CDATA section (left for the reference, then taken up again),
    # and a comment, which holds no references: there the reference is only text
    assert (b'<String name="u&#x1F600;" >kim<![CDATA[<]]>&#x1F600;<![CDATA[>]]>&#x1F600;'
            b"<![CDATA[]]>@example.org</String><!-- &#x1F600; -->") in sent
    assert codec.decode(sent) == codec.decode(data)
    latin = text.replace('encoding="UTF-8"', 'encoding="ISO-8859-1"').replace(GRIN, "")
    assert codec.text_message(latin.encode("latin-1")) == codec.utf8(latin.encode("latin-1"))
    plain = DOC_TEXT.encode("utf-8")
    assert codec.text_message(plain) is plain


def test_a_java_senders_text_is_read_in_utf8(codec) -> None:
    text = DOC_TEXT.replace("Café broadband", f"Café {GRIN} broadband")
    java = text.encode("utf-8").replace(GRIN.encode("utf-8"), GRIN_JAVA)
    with pytest.raises(DocumentParseError):
        codec.decode(java)  # not UTF-8 as XML reads it
    for text_message in (True, False):
        assert codec.delivered(java, text_message) == text.encode("utf-8")
    plain = text.encode("utf-8")
    assert codec.delivered(plain, True) is plain
    # half a pair is no character in any encoding: left as it came, and refused
    lone = plain.replace(GRIN.encode("utf-8"), GRIN_JAVA[:3])
    assert codec.delivered(lone, True) == lone


LATIN_DECLARED = DOC_TEXT.replace('encoding="UTF-8"', 'encoding="ISO-8859-1"')


def test_a_text_message_is_read_as_a_jms_listener_reads_it(codec) -> None:
    """A JMS TextMessage holds text, which ActiveMQ hands to STOMP in Java's UTF-8 whatever
    the document's declaration says (a Java sender that wrote it out as ISO-8859-1 into a
    String): read as UTF-8 where a JMS listener could read it, the declaration saying so."""
    java = LATIN_DECLARED.encode("utf-8")  # "Café": C3 A9, which ISO-8859-1 reads as "Ã©"
    assert codec.delivered(java, True) == DOC_TEXT.encode("utf-8")
    utf16 = LATIN_DECLARED.replace("ISO-8859-1", "UTF-16").replace("Café", f"Café {GRIN}")
    assert codec.delivered(utf16.encode("utf-8").replace(GRIN.encode("utf-8"), GRIN_JAVA),
                           True) == utf16.replace("UTF-16", "UTF-8").encode("utf-8")
    # what no JMS listener could read is a STOMP sender's bytes, in the encoding they name
    latin = LATIN_DECLARED.encode("latin-1")
    assert codec.delivered(latin, True) is latin
    # bytes that read the same either way are kept as they came
    ascii_only = LATIN_DECLARED.replace("Café", "Cafe").encode("ascii")
    assert codec.delivered(ascii_only, True) is ascii_only
    # a declaration naming a codec that is no character encoding is only a wrong one
    for name in ("base64", "undefined", "rot13", "unicode-escape", "no-such"):
        named = LATIN_DECLARED.replace("ISO-8859-1", name)
        assert codec.delivered(named.encode("utf-8"), True) == DOC_TEXT.encode("utf-8")
    # a BytesMessage (a content-length) holds its sender's bytes: its declaration decides
    assert codec.delivered(java, False) is java
    assert codec.delivered(DOC_TEXT.encode("utf-16"), True) == DOC_TEXT.encode("utf-16")
