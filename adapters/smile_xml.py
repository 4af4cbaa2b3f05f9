"""SmileXmlCodec: hardened lxml parsing, XSD validation and deterministic building of Smile XML."""

from __future__ import annotations

import codecs
import copy
import re
import threading
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TypeVar

from lxml import etree

from gateway.domain import (
    SMILE_NS,
    ActivateStatus,
    Cycle,
    Document,
    DocumentOutline,
    EnableStatus,
    Feature,
    KeyedText,
    PlanScheduleItem,
    Property,
    PropertyType,
    PropertyValue,
    ProvisionStatus,
    Statuses,
    Subscription,
    SubscriptionFeaturesUpdate,
    SubscriptionProvisionResponse,
    SubscriptionUpdated,
    SuspendStatus,
    token_value,
)
from gateway.errors import (
    ConfigError,
    DocumentInvalidError,
    DocumentParseError,
    UnsupportedCharsetError,
    Violation,
    clip,
)

T = TypeVar("T")
DEFAULT_MAX_BYTES = 1024 * 1024
# Written by hand: lxml's own declaration uses single quotes, Smile's documents double ones.
_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'
# A document that starts in ASCII (no byte order mark), with its declaration's encoding if
# it has one: UTF-8 unless that says otherwise.
_UTF8_PROLOG = re.compile(
    rb"(?=[^\xef\xfe\xff\x00][^\x00])(?:<\?xml[^>]*?\sencoding\s*=\s*[\"'](?P<encoding>[^\"']*)[\"']|"
    rb"(?!<\?xml[^>]*?\sencoding))")
_BYTE_ORDER_MARKS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                     (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
                     (codecs.BOM_UTF8, "utf-8-sig"))
# Text codecs of Python's that are no charset a transport would label XML with: escapes,
# host names, none at all; UTF-7 hides markup from any byte scan.
_NOT_CHARSETS = frozenset({"unicode-escape", "raw-unicode-escape", "idna", "punycode",
                           "undefined", "utf-7", "mbcs", "oem"})
# A charset label without a byte order mark means big-endian (RFC 2781, 4.3).
_UNMARKED = {"utf-16": "utf-16-be", "utf-32": "utf-32-be"}
# The declaration's encoding in a document's text, to rewrite it.
_ENCODING_DECLARED = re.compile(r"\A(<\?xml[^>]*?\sencoding\s*=\s*)[\"'][^\"']*[\"']")
# ActiveMQ keeps a JMS TextMessage's text in Java's own UTF-8, in which a character beyond
# U+FFFF is its two UTF-16 halves of three bytes each (CESU-8): a JMS client reading UTF-8's
# four-byte form fails (UTFDataFormatException), and a Java sender's pair is no UTF-8 to XML.
_BEYOND_FFFF = re.compile(rb"[\xf0-\xf4][\x80-\xbf]{3}")
_FOUR_BYTE_LEADS = (b"\xf0", b"\xf1", b"\xf2", b"\xf3", b"\xf4")
# What a character reference cannot stand in: a CDATA section, a comment or PI (where it is
# only text), a tag's names outside its quoted values (a tag only when it holds such a
# character); and a character beyond U+FFFF.
_MARKUP_OR_BEYOND_FFFF = re.compile(
    rb"<!\[CDATA\[(?P<cdata>.*?)\]\]>|<!--.*?-->|<\?.*?\?>|"
    rb"(?P<tag><[^>\xf0-\xf4]*[\xf0-\xf4][^>]*>)|[\xf0-\xf4][\x80-\xbf]{3}", re.S)
_QUOTED = re.compile(rb"\"[^\"]*\"|'[^']*'")
_JAVA_PAIR = re.compile(rb"\xed([\xa0-\xaf])([\x80-\xbf])\xed([\xb0-\xbf])([\x80-\xbf])")
# libxml2 names a schema error's place by an XPath with the document's own prefixes
# (`/ns2:SubscriptionFeaturesUpdate/ns2:Subscription/ns2:SID`, as JAXB writes documents),
# which are bound nowhere the XPath can see, and may be bound twice: each step by its local
# name instead.
_PREFIXED_STEP = re.compile(r"[A-Za-z_][\w.-]*:([A-Za-z_][\w.-]*)")
_UNPREFIXED_STEP = r"*[local-name()='\1']"
# A colon before the start of a name: a prefix (a literal first, so the search is quick).
_PREFIX_COLON = re.compile(rb":[A-Za-z_\x80-\xff]")
_NS = "{" + SMILE_NS + "}"
_NSMAP = {None: SMILE_NS}

# libxml2 names types by their expanded name; these say what a reader expected instead.
_FRIENDLY_TYPES = {
    f"'{_NS}BooleanOrEmpty'": "'BooleanOrEmpty' (expected true, false, or empty)",
    f"'{_NS}IntegerOrEmpty'": "'IntegerOrEmpty' (expected an integer, or empty)",
    f"'{_NS}DecimalOrEmpty'": "'DecimalOrEmpty' (expected a decimal number, or empty)",
    f"'{_NS}DateOrEmpty'": "'DateOrEmpty' (expected a date YYYY-MM-DD, or empty)",
    f"'{_NS}OffsetDateTimeOrEmpty'":
        "'OffsetDateTimeOrEmpty' (expected a dateTime with a UTC offset, or empty)",
    f"'{_NS}OffsetDateTime'": "'OffsetDateTime' (expected a dateTime with a UTC offset, "
                              "e.g. 2012-08-08T00:00:00.000+10:00)",
    f"'{_NS}NonEmptyToken'": "'NonEmptyToken' (expected non-empty text)",
}
# A pattern facet's refusal quotes the schema's pattern; these say what each one asks for.
FRIENDLY_PATTERNS = {
    r"-?\d\d\d\d+-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+\-]\d\d:\d\d)":
        "has no UTC offset (expected a dateTime with one, e.g. 2012-08-08T00:00:00.000+10:00)",
    r"\d{4}-\d\d-\d\d": "is not a plain date (expected YYYY-MM-DD, without an offset)",
}
_PATTERN_REFUSED = re.compile(
    r"\[facet 'pattern'\] The value '(.*)' is not accepted by the pattern '(.*)'\.$", re.DOTALL)
_POSITION_SUFFIX = re.compile(r"(, line \d+)?, line \d+, column \d+$")
# libxml2's limits name the option that lifts them, which a sender cannot set: say the limit.
_LIMIT_HINT = re.compile(r",? use XML_PARSE_HUGE option")
_DEPTH = re.compile(r"Excessive depth in document: (\d+)")
_DOCTYPE_REFUSED = "a DOCTYPE is not allowed (DTDs and entities are refused)"
# The prolog: BOM, XML declaration, comments, processing instructions, white space; then DOCTYPE.
_PROLOG_DOCTYPE = re.compile(
    rb"(?:\xef\xbb\xbf)?(?>\s+|<\?.*?\?>|<!--.*?-->)*+(<!DOCTYPE)", re.DOTALL)
# Documents starting with one of these were read by the byte scan above; others (UTF-16, ...)
# are checked on the parsed tree.
_SCANNED_STARTS = frozenset((b"<", b"\xef", b" ", b"\t", b"\r", b"\n"))
_NO_ROOT = "No matching global declaration available for the validation root."
_ROOTS_EXPECTED = (
    "expected a root element SubscriptionFeaturesUpdate, SubscriptionUpdated or "
    f"SubscriptionProvisionResponse in namespace {SMILE_NS}")
_FRIENDLY_RE = re.compile("|".join(re.escape(k) for k in _FRIENDLY_TYPES))


def _friendly(message: str) -> str:
    message = _FRIENDLY_RE.sub(lambda m: _FRIENDLY_TYPES[m.group(0)], message)
    refused = _PATTERN_REFUSED.search(message)
    if refused and refused.group(2) in FRIENDLY_PATTERNS:
        message = (f"{message[:refused.start()]}The value '{refused.group(1)}' "
                   f"{FRIENDLY_PATTERNS[refused.group(2)]}.")
    if message.endswith(_NO_ROOT):
        message = f"{message[:-1]}: {_ROOTS_EXPECTED}."
    return message.replace(_NS, "")


def _syntax_message(message: str) -> str:
    message = _LIMIT_HINT.sub("", _POSITION_SUFFIX.sub("", message))
    return _DEPTH.sub(r"elements nested more than \1 levels deep", message)


def _local(tag: object) -> str:
    text = str(tag)
    return text.rsplit("}", 1)[-1]


def _has_doctype(root: etree._Element) -> bool:
    docinfo = root.getroottree().docinfo
    return bool(docinfo.doctype) or docinfo.internalDTD is not None


def element_path(element: etree._Element) -> str:
    """`/SubscriptionFeaturesUpdate/Subscription/SID`, with [n] where a name repeats."""
    parts: list[str] = []
    node: etree._Element | None = element
    while node is not None:
        name = _local(node.tag)
        parent = node.getparent()
        if parent is not None:
            same = [c for c in parent if c.tag == node.tag]
            if len(same) > 1:
                name += f"[{same.index(node) + 1}]"
        parts.append(name)
        node = parent
    return "/" + "/".join(reversed(parts))


def _column(data: bytes, line: int, name: str) -> int:
    """libxml2 gives no column for schema errors: find the element's start tag on its line."""
    if line < 1:
        return 0
    start = 0
    for _ in range(line - 1):
        start = data.find(b"\n", start) + 1
        if start == 0:
            return 0
    end = data.find(b"\n", start)
    text = data[start:] if end < 0 else data[start:end]
    match = re.search(rb"<(?:[\w.-]+:)?" + re.escape(name.encode()) + rb"[\s/>]", text)
    if match is None:
        return 1
    return len(text[: match.start()].decode("utf-8", "replace")) + 1


def _reference(match: re.Match[bytes]) -> bytes:
    return b"&#x%X;" % ord(match[0].decode("utf-8"))


def _beyond_ffff_referenced(data: bytes) -> bytes:
    """UTF-8 `data` with each character beyond U+FFFF written as a character reference, which
    any XML reader takes as the character itself: in text and in attribute values; a CDATA
    section is left for the reference and taken up again after it. In a comment or PI the
    reference is only text (neither is data); a name keeps its character, there is no other
    way to write it. `data` itself when it holds none (nearly always)."""
    if not any(lead in data for lead in _FOUR_BYTE_LEADS):  # five memchr, not a regex scan
        return data

    def written(match: re.Match[bytes]) -> bytes:
        if match["cdata"] is not None:
            inner = _BEYOND_FFFF.sub(lambda m: b"]]>" + _reference(m) + b"<![CDATA[",
                                     match["cdata"])
            return b"<![CDATA[" + inner + b"]]>"
        if match["tag"] is not None:
            return _QUOTED.sub(lambda q: _BEYOND_FFFF.sub(_reference, q[0]), match["tag"])
        if match[0].startswith(b"<"):  # a comment or PI
            return _BEYOND_FFFF.sub(_reference, match[0])
        return _reference(match)

    return _MARKUP_OR_BEYOND_FFFF.sub(written, data)


def _joined(match: re.Match[bytes]) -> bytes:
    """One character beyond U+FFFF from its two Java (CESU-8) halves, in UTF-8."""
    a, b, c, d = (byte[0] & 0x3F for byte in match.groups())
    high = 0xD000 | (a << 6) | b
    low = 0xD000 | (c << 6) | d
    return chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)).encode("utf-8")


def _says_utf8(data: bytes) -> bool:
    """Whether a document starts in ASCII, without a byte order mark, and is UTF-8 as its
    declaration says (or by having none)."""
    declared = _UTF8_PROLOG.match(data)
    return declared is not None and (
        declared["encoding"] or b"UTF-8").upper() in (b"UTF-8", b"UTF8")


def _in_utf8(text: str) -> bytes:
    """A document's text in UTF-8, its declaration (if it names an encoding) saying so."""
    return _ENCODING_DECLARED.sub(r'\g<1>"UTF-8"', text, count=1).encode("utf-8")


def _may_break_namespaces(data: bytes) -> bool:
    """Whether a document might break a rule of XML Namespaces 1.0: whether it holds a
    colon before the start of a name (`p:name`, `xmlns:p`, `<?p:target`), as every such
    error needs. libxml2 goes on after one, and validating while it parses it kept no word of
    it, so the one pass took documents the hardened parse calls not well-formed (a prefix
    bound nowhere on a `name` attribute leaves the validator the name alone). A Smile
    document has no such colon: its namespace is the default one, and the colons of its URI
    and dateTimes are followed by '/' and digits; one that has, or a URN in a value, takes
    the two passes."""
    return _PREFIX_COLON.search(data) is not None


def _codec_name(encoding: bytes) -> str | None:
    """Python's name for an encoding a declaration names, if Python knows it."""
    try:
        return codecs.lookup(encoding.decode("ascii")).name
    except (LookupError, UnicodeDecodeError):
        return None


class SmileXmlCodec:
    """Reads, validates and writes Smile documents against one XSD.

    Parsing is hardened: a DOCTYPE is refused, entities are never expanded, no DTD and nothing
    on the network is ever loaded, and a document over `max_bytes` is refused before parsing.
    lxml parsers and schema validators keep per-use state, so each thread gets its own; the
    schema is compiled once per thread and reused.
    """

    def __init__(self, schema_path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.schema_path = Path(schema_path)
        self.max_bytes = max_bytes
        self._local = threading.local()
        try:  # fail at start-up, not on the first document
            self._schema_tree = etree.parse(str(self.schema_path), self._new_parser())
            self._schema()
        except (OSError, etree.LxmlError) as exc:
            raise ConfigError("schema.path", f"{self.schema_path} is not a usable XML Schema: "
                              f"{clip(str(exc))}") from exc

    # -- plumbing ---------------------------------------------------------------------------

    @staticmethod
    def _new_parser(schema: etree.XMLSchema | None = None) -> etree.XMLParser:
        # remove_blank_text: whitespace between elements is not kept as text nodes (a tenth
        # less work for libxml2). An element whose content is only whitespace keeps it; only
        # whitespace before a comment inside such an element is dropped with the comment.
        return etree.XMLParser(
            resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
            attribute_defaults=False, huge_tree=False, collect_ids=False, remove_pis=True,
            remove_comments=True, remove_blank_text=True, schema=schema)

    def _parser(self) -> etree.XMLParser:
        parser: etree.XMLParser | None = getattr(self._local, "parser", None)
        if parser is None:
            parser = self._local.parser = self._new_parser()
        return parser

    def _validating_parser(self) -> etree.XMLParser:
        """The same hardened parser, validating against the schema as it parses."""
        parser: etree.XMLParser | None = getattr(self._local, "validating_parser", None)
        if parser is None:
            parser = self._local.validating_parser = self._new_parser(self._schema())
        return parser

    def _schema(self) -> etree.XMLSchema:
        schema: etree.XMLSchema | None = getattr(self._local, "schema", None)
        if schema is None:
            schema = self._local.schema = etree.XMLSchema(self._schema_tree)
        return schema

    # -- reading ----------------------------------------------------------------------------

    def _refuse_unsafe(self, data: bytes) -> None:
        """What is refused before libxml2 reads a byte: too large, or a DOCTYPE (nothing in
        it is then ever processed; the check after parsing catches the encodings this byte
        scan cannot read, UTF-16)."""
        if len(data) > self.max_bytes:
            # readers take one byte over the limit, not the rest: then the size is unknown
            message = (f"document is over the limit of {self.max_bytes} bytes"
                       if len(data) == self.max_bytes + 1 else
                       f"document is {len(data)} bytes, over the limit of {self.max_bytes}")
            raise DocumentParseError(message, [Violation(1, 1, "", message)])
        doctype = _PROLOG_DOCTYPE.match(data) if b"<!DOCTYPE" in data else None
        if doctype is not None:
            line = data.count(b"\n", 0, doctype.end(1)) + 1
            raise DocumentParseError(_DOCTYPE_REFUSED, [Violation(line, 1, "", _DOCTYPE_REFUSED)])

    def parse_tree(self, data: bytes) -> etree._Element:
        """Hardened parse into an lxml element; DocumentParseError on anything unsafe or broken."""
        self._refuse_unsafe(data)
        try:
            root = etree.fromstring(data, self._parser())
        except etree.XMLSyntaxError as exc:
            line, column = exc.position if exc.position else (1, 1)
            message = "not well-formed: " + _syntax_message(exc.msg or str(exc))
            raise DocumentParseError(
                message, [Violation(line or 1, column or 1, "", message)]) from exc
        except ValueError as exc:  # e.g. a str with an encoding declaration
            raise DocumentParseError(str(exc), [Violation(1, 1, "", str(exc))]) from exc
        if root is None:
            raise DocumentParseError("document is empty", [Violation(1, 1, "", "empty")])
        if data[:1] not in _SCANNED_STARTS and _has_doctype(root):
            raise DocumentParseError(_DOCTYPE_REFUSED, [Violation(1, 1, "", _DOCTYPE_REFUSED)])
        return root

    def violations(self, root: etree._Element, data: bytes) -> list[Violation]:
        schema = self._schema()
        if schema.validate(root):
            return []
        found = []
        for entry in schema.error_log:
            path = ""
            name = ""
            if entry.path:
                hits = root.getroottree().xpath(_PREFIXED_STEP.sub(_UNPREFIXED_STEP, entry.path))
                if isinstance(hits, list) and hits and isinstance(hits[0], etree._Element):
                    path = element_path(hits[0])
                    name = _local(hits[0].tag)
            column = entry.column or (_column(data, entry.line, name) if name else 1)
            found.append(Violation(entry.line, column, path, _friendly(entry.message)))
        return found

    def check(self, data: bytes) -> list[Violation]:
        try:
            root = self.parse_tree(data)
        except DocumentParseError as exc:
            return list(exc.violations)
        return self.violations(root, data)

    def _validated_root(self, data: bytes) -> etree._Element:
        """The parsed tree of a document that passed the schema; DocumentParseError or
        DocumentInvalidError (every violation) otherwise."""
        self._refuse_unsafe(data)
        root: etree._Element | None
        try:
            # One pass: libxml2 validates as it parses, so the GIL is let go of once less
            # than parsing and then validating the tree (a thread switch under load).
            root = etree.fromstring(data, self._validating_parser())
        except (etree.XMLSyntaxError, ValueError):
            root = None  # broken or invalid: the two passes below say which, and where
        if root is None or data[:1] not in _SCANNED_STARTS or _may_break_namespaces(data):
            root = self.parse_tree(data)
            found = self.violations(root, data)
            if found:
                first = found[0]
                raise DocumentInvalidError(
                    f"{len(found)} schema violation(s); first at line {first.line}: "
                    f"{clip(first.message)}", found)
        return root

    def _read(self, data: bytes, reader: Callable[[etree._Element], T]) -> T:
        """`reader` over the validated tree; a value it cannot hold is a located violation."""
        root = self._validated_root(data)
        try:
            return reader(root)
        except _ValueProblem as exc:
            raise DocumentInvalidError(str(exc), [exc.violation]) from exc

    def decode(self, data: bytes) -> Document:
        return self._read(data, _read_document)

    def outline(self, data: bytes) -> DocumentOutline:
        return self._read(data, _read_outline)

    def feature_ids(self, data: bytes) -> frozenset[int]:
        root = etree.fromstring(data, self._parser())
        return frozenset(int(el.text) for el in root.iter(_NS + "FeatureId"))

    def utf8(self, data: bytes) -> bytes:
        # Smile's documents are UTF-8, but ISO-8859-1 or UTF-16 ones parse as well. The bus
        # carries text (a TextMessage, no content-length: UTF-16's NUL bytes would end the
        # frame), and a JSON view is text: such a document is read in its encoding and
        # written in UTF-8, its declaration saying so, nothing else changed. Where Python
        # does not know the encoding's name, the parsed tree is written out instead.
        if _says_utf8(data):
            return data  # the common case, without a parse
        tree = etree.fromstring(data, self._parser()).getroottree()
        marked = [name for mark, name in _BYTE_ORDER_MARKS if data.startswith(mark)]
        try:  # a byte order mark says which, else the declaration as the parser read it
            text = data.decode(marked[0] if marked else tree.docinfo.encoding or "utf-8")
        except (LookupError, UnicodeDecodeError):
            text = str(etree.tostring(tree, encoding="unicode"))
        return _in_utf8(text)

    def labelled(self, data: bytes, charset: str) -> bytes:
        # RFC 7303, 3.2: a byte order mark decides the encoding, else the transport's charset
        # label, and only then the document's own declaration. A label is most often UTF-8
        # over a document that says so, or nothing: `data` then as it came.
        if data.startswith(tuple(mark for mark, _ in _BYTE_ORDER_MARKS)):
            return data
        try:
            name = codecs.lookup(charset).name
            if name in _NOT_CHARSETS:
                raise LookupError(charset)
            declared = _UTF8_PROLOG.match(data)  # what the document says, if it starts ASCII
            if declared and _codec_name(declared["encoding"] or b"UTF-8") == name:
                return data  # the two agree: kept as it came
            text = data.decode(_UNMARKED.get(name, name))
        except LookupError as exc:  # unknown, or a codec that is no text encoding (base64)
            message = f"charset {charset!r} is not a character encoding the gateway reads"
            raise UnsupportedCharsetError(message, [Violation(1, 1, "", message)]) from exc
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            column = exc.start - data.rfind(b"\n", 0, exc.start)
            message = (f"not well-formed: byte {exc.start} (0x{data[exc.start]:02x}) is not "
                       f"{charset}, as the Content-Type says the document is")
            raise DocumentParseError(message, [Violation(line, column, "", message)]) from exc
        return _in_utf8(text)

    def text_message(self, data: bytes) -> bytes:
        return _beyond_ffff_referenced(self.utf8(data))

    def delivered(self, data: bytes, text_message: bool) -> bytes:
        # Java's halves are never UTF-8: joining them changes no reading of a document that
        # was read before.
        joined = _JAVA_PAIR.sub(_joined, data) if b"\xed" in data else data
        if data.startswith(codecs.BOM_UTF8) or _says_utf8(data):
            return joined
        if not text_message:
            return data  # a sender's bytes: its declaration (or byte order mark) decides
        # A JMS listener reads it where it is Java's UTF-8 (which also takes overlong forms,
        # refused by XML anyway); what none could read is a STOMP sender's bytes in the
        # encoding they name.
        try:
            text = joined.decode("utf-8")
        except UnicodeDecodeError:
            return data
        declared = _UTF8_PROLOG.match(data)
        name = _codec_name(declared["encoding"]) if declared and declared["encoding"] else None
        if name is not None and name not in _NOT_CHARSETS and joined is data:
            try:
                if data.decode(name) == text:
                    return data  # read the same either way (ASCII): kept as it came
            except (UnicodeError, LookupError):  # LookupError: a codec of no text (base64)
                pass
        return _in_utf8(text)

    # -- writing ----------------------------------------------------------------------------

    def build_tree(self, document: Document) -> etree._Element:
        return _write_document(document)

    def encode(self, document: Document) -> bytes:
        root = _write_document(document)
        data: bytes = _beyond_ffff_referenced(_DECLARATION + etree.tostring(
            root, xml_declaration=False, encoding="UTF-8", pretty_print=True))
        found = self.violations(root, data)
        if found:
            raise DocumentInvalidError(
                f"rendered document violates the schema: {clip(found[0].message)}", found)
        return data


# ---------------------------------------------------------------------------------------------
# XML -> model. The tree has been validated, so shape is trusted; values that XSD accepts but
# Python cannot hold (year 0, 24:00:00) raise _ValueProblem with their place.


class _ValueProblem(ValueError):
    def __init__(self, element: etree._Element, message: str) -> None:
        self.violation = Violation(element.sourceline or 0, 1, element_path(element), message)
        super().__init__(f"line {self.violation.line}: {self.violation.path}: {message}")


def _q(name: str) -> str:
    return _NS + name


# Expanded names the readers below tell apart. The parser drops comments and processing
# instructions, so every child is an element.
_ACCESSORY, _INVOICING, _RATING, _TIMEZONE = map(
    _q, ("AccessoryDataList", "InvoicingCycle", "RatingCycle", "Timezone"))
_FEATURES_UPDATE, _UPDATED = map(_q, ("SubscriptionFeaturesUpdate", "SubscriptionUpdated"))
# Lookups instead of Enum calls (a tenth of the cost); the schema has checked every value.
_PROVISION_STATUSES = {s.value: s for s in ProvisionStatus}
_SUSPEND_STATUSES = {s.value: s for s in SuspendStatus}
_ACTIVATE_STATUSES = {s.value: s for s in ActivateStatus}
_ENABLE_STATUSES = {s.value: s for s in EnableStatus}


def _text(element: etree._Element) -> str:
    return element.text or ""


def parse_datetime(text: str) -> datetime:
    """xs:dateTime with an offset: 2012-08-08T00:00:00.000+10:00, 2011-01-01T00:00:00Z."""
    return datetime.fromisoformat(text.strip())


def format_datetime(value: datetime) -> str:
    """Smile's style: milliseconds and a numeric offset (UTC written +00:00)."""
    return value.isoformat(timespec="milliseconds")


def _boolean(text: str) -> bool:
    return text.strip() in ("true", "1")


def _decimal(text: str) -> Decimal:
    return Decimal(text.strip())


def _date(text: str) -> date:
    return date.fromisoformat(text.strip())


# Text -> value by the element's expanded name; the schema has checked each lexical form.
_CONVERTERS: dict[str, tuple[PropertyType, Callable[[str], PropertyValue]]] = {
    _q(PropertyType.STRING.value): (PropertyType.STRING, str),
    _q(PropertyType.BOOLEAN.value): (PropertyType.BOOLEAN, _boolean),
    _q(PropertyType.INTEGER.value): (PropertyType.INTEGER, int),
    _q(PropertyType.DECIMAL.value): (PropertyType.DECIMAL, _decimal),
    _q(PropertyType.DATE.value): (PropertyType.DATE, _date),
    _q(PropertyType.TIMESTAMP.value): (PropertyType.TIMESTAMP, parse_datetime),
}


# The value types whose schema-valid text Python may still refuse (year 0 or past 9999,
# 24:00:00): the outline converts these, so that it refuses what the whole read refuses.
_RANGED: dict[str, Callable[[str], PropertyValue]] = {
    _q(PropertyType.DATE.value): _date, _q(PropertyType.TIMESTAMP.value): parse_datetime}


def _value(child: etree._Element, convert: Callable[[str], PropertyValue]) -> PropertyValue:
    text = child.text
    if not text:  # an empty element is Smile's "no value"
        return None
    try:
        return convert(text)
    except (ValueError, InvalidOperation) as exc:
        raise _ValueProblem(child, f"value {clip(text)!r} is out of range: {exc}") from exc


def _read_object(obj: etree._Element) -> tuple[Property, ...]:
    values = []
    for child in obj:
        kind, convert = _CONVERTERS[child.tag]
        values.append(Property(kind, token_value(child.get("name")), _value(child, convert)))
    return tuple(values)


def _start(element: etree._Element) -> datetime:
    try:
        return parse_datetime(_text(element))
    except ValueError as exc:
        raise _ValueProblem(element, f"dateTime out of range: {exc}") from exc


def _read_cycle(element: etree._Element) -> Cycle:
    cycle_type, cycle_day = element
    return Cycle(token_value(cycle_type.text), int(_text(cycle_day)))


def _statuses(provision: etree._Element, suspend: etree._Element,
              activate: etree._Element, enable: etree._Element) -> Statuses:
    return Statuses(
        _PROVISION_STATUSES[(provision.text or "").strip()],
        _SUSPEND_STATUSES[(suspend.text or "").strip()],
        _ACTIVATE_STATUSES[(activate.text or "").strip()],
        _ENABLE_STATUSES[(enable.text or "").strip()],
    )


# The readers below take children by position: every content model here is an xs:sequence,
# and the document has passed the schema before it is read.

def _read_subscription(element: etree._Element) -> Subscription:
    children = list(element)
    usn, sid, service_name, parent, properties, provision, suspend, activate, enable = \
        children[:9]
    accessory = invoicing = rating = timezone = cost_centre = None
    for child in children[9:]:  # the optional ones after EnableStatus, in schema order
        tag = child.tag
        if tag == _ACCESSORY:
            # a copy: it declares the namespaces in scope, which C14N of the element itself
            # would find undeclared (they are on the root)
            accessory = etree.canonicalize(copy.deepcopy(child), strip_text=True)
        elif tag == _INVOICING:
            invoicing = _read_cycle(child)
        elif tag == _RATING:
            rating = _read_cycle(child)
        elif tag == _TIMEZONE:
            timezone = KeyedText(child.get("key", ""), child.text or "")
        else:  # CostCentre
            cost_centre = KeyedText(child.get("key", ""), child.text or "")
    return Subscription(
        token_value(usn.text),
        int(sid.text or ""),
        service_name.text or "",
        token_value(parent.text),
        _read_object(properties[0]),
        _statuses(provision, suspend, activate, enable),
        accessory, invoicing, rating, timezone, cost_centre,
    )


def _read_feature(element: etree._Element) -> Feature:
    feature_id, name, obj = element
    return Feature(int(_text(feature_id)), _text(name), _read_object(obj))


def _read_plan(element: etree._Element) -> PlanScheduleItem:
    children = list(element)
    start = _start(children[2]) if len(children) > 2 else None
    return PlanScheduleItem(token_value(children[0].text), int(_text(children[1])), start)


def _read_document(root: etree._Element) -> Document:
    if root.tag == _FEATURES_UPDATE:
        subscription, features, plans = root
        return SubscriptionFeaturesUpdate(
            _read_subscription(subscription),
            tuple(map(_read_feature, features)),
            tuple(map(_read_plan, plans)),
        )
    if root.tag == _UPDATED:
        return SubscriptionUpdated(_read_subscription(root[0]))
    children = list(root)  # provisionRequestId, status, message?
    return SubscriptionProvisionResponse(
        int(_text(children[0])),
        token_value(children[1].text),
        _text(children[2]) if len(children) > 2 else None,
    )


def _check_object(obj: etree._Element) -> None:
    """Converts the Object's Date and Timestamp values as the whole read would."""
    for child in obj:
        convert = _RANGED.get(child.tag)
        if convert is not None:
            _value(child, convert)


def _read_outline(root: etree._Element) -> DocumentOutline:
    """The outline of a validated tree. It converts what the whole read might refuse (Date
    and Timestamp values, the plans' Start), so that both refuse the same documents."""
    tag = root.tag
    if tag == _FEATURES_UPDATE:
        subscription, features, plans = root
        ids = []
        for feature in features:
            feature_id, _, obj = feature
            ids.append(int(_text(feature_id)))
            _check_object(obj)
        for plan in plans:  # PlanCode, PlanScheduleType, Start?
            if len(plan) > 2:
                _start(plan[2])
        body: type[SubscriptionFeaturesUpdate | SubscriptionUpdated] = \
            SubscriptionFeaturesUpdate
        feature_ids = frozenset(ids)
    elif tag == _UPDATED:
        subscription = root[0]
        body, feature_ids = SubscriptionUpdated, frozenset()
    else:  # provisionRequestId, status, message?
        return DocumentOutline(SubscriptionProvisionResponse,
                               provision_request_id=int(_text(root[0])),
                               status=token_value(root[1].text))
    usn, sid, _, _, properties, provision, suspend, activate, enable = subscription[:9]
    _check_object(properties[0])
    return DocumentOutline(body, token_value(usn.text), int(sid.text or ""),
                           _statuses(provision, suspend, activate, enable), feature_ids)


# ---------------------------------------------------------------------------------------------
# model -> XML


def _format_value(value: PropertyValue) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _add(parent: etree._Element, tag: str, text: str | None = None) -> etree._Element:
    child = etree.SubElement(parent, _NS + tag)
    if text:
        child.text = text
    return child


def _write_object(parent: etree._Element, properties: tuple[Property, ...]) -> None:
    obj = _add(parent, "Object")
    for prop in properties:
        _add(obj, prop.type.value, _format_value(prop.value)).set("name", prop.name)


def _write_subscription(parent: etree._Element, sub: Subscription) -> None:
    el = _add(parent, "Subscription")
    _add(el, "USN", sub.usn)
    _add(el, "SID", str(sub.sid))
    _add(el, "ServiceName", sub.service_name)
    _add(el, "Parent", sub.parent)
    _write_object(_add(el, "Properties"), sub.properties)
    _add(el, "ProvisionStatus", sub.statuses.provision.value)
    _add(el, "SuspendStatus", sub.statuses.suspend.value)
    _add(el, "ActivateStatus", sub.statuses.activate.value)
    _add(el, "EnableStatus", sub.statuses.enable.value)
    if sub.accessory_data_list is not None:
        el.append(etree.fromstring(sub.accessory_data_list, SmileXmlCodec._new_parser()))
    for tag, cycle in (("InvoicingCycle", sub.invoicing_cycle), ("RatingCycle", sub.rating_cycle)):
        if cycle is not None:
            c = _add(el, tag)
            _add(c, "CycleType", cycle.cycle_type)
            _add(c, "CycleDay", str(cycle.cycle_day))
    for tag, keyed in (("Timezone", sub.timezone), ("CostCentre", sub.cost_centre)):
        if keyed is not None:
            _add(el, tag, keyed.text).set("key", keyed.key)


def _write_document(document: Document) -> etree._Element:
    if isinstance(document, SubscriptionProvisionResponse):
        root = etree.Element(_NS + "SubscriptionProvisionResponse", nsmap=_NSMAP)
        _add(root, "provisionRequestId", str(document.provision_request_id))
        _add(root, "status", document.status)
        if document.message is not None:
            _add(root, "message", document.message)
        return root
    if isinstance(document, SubscriptionUpdated):
        root = etree.Element(_NS + "SubscriptionUpdated", nsmap=_NSMAP)
        _write_subscription(root, document.subscription)
        return root
    root = etree.Element(_NS + "SubscriptionFeaturesUpdate", nsmap=_NSMAP)
    _write_subscription(root, document.subscription)
    features = _add(root, "ActiveFeatures")
    for feature in document.features:
        f = _add(features, "Feature")
        _add(f, "FeatureId", str(feature.feature_id))
        _add(f, "Name", feature.name)
        _write_object(f, feature.properties)
    plans = _add(root, "PlanScheduleItems")
    for plan in document.plans:
        p = _add(plans, "PlanScheduleItem")
        _add(p, "PlanCode", plan.plan_code)
        _add(p, "PlanScheduleType", str(plan.plan_schedule_type))
        if plan.start is not None:
            _add(p, "Start", format_datetime(plan.start))
    return root
