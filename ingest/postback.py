"""From a request body to validated postback items.

This module knows the vendor's format (docs/contract.md, "The vendor's postback") and nothing about HTTP or Kafka:
``read_postbacks(body, content_type)`` returns one ``Postback`` per item or raises
``Rejected`` with the status code, a machine code and a sentence for the client.

What it accepts:

* a raw XML body with any content type, or a form body whose ``xml`` field holds it;
* a flat ``POSTBACK``, a ``POSTBACK`` holding ``NOTIFICATION`` items, or any wrapper
  element holding several ``POSTBACK`` elements: one item each;
* the vendor's printed example, whose root start tag is broken across a line. Recovery
  drops the root's attributes and parses strictly again, and only when those attributes
  are namespace or ``xsi:`` schema-location declarations, so it can never lose a field.

Nothing is lost: elements the schema does not name go to ``extra`` keyed by their path
relative to the item (``PASSDATA/BARCODEVALUE``; a repeated name gets ``[2]``, ``[3]``;
attributes get ``/@name``). Elements of an enclosing ``POSTBACK`` or wrapper are
inherited by every item inside it; where the item has the same element, the item's own
value wins and the enclosing one is kept in ``extra`` under ``../PATH``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import unquote_to_bytes

from lxml import etree

from passpost.ingest.refusal import Rejected
from passpost.schemas.event import PassPostback, classify

# The vendor's element names and the event fields they fill (docs/contract.md, "The events").
KNOWN_ELEMENTS: dict[str, str] = {
    "ORIGIN": "origin",
    "STATUSCODE": "status_code",
    "CODE": "code",
    "REFERENCEDBY": "referenced_by",
    "REFERENCEVALUE": "reference_value",
    "CUSTOMPASSID": "custom_pass_id",
    "PASSDATAID": "pass_data_id",
    "SERIALNUMBER": "serial_number",
    "TIMESTAMP": "timestamp_raw",
}
if not set(KNOWN_ELEMENTS.values()) <= {field.name for field in dataclasses.fields(PassPostback)}:
    raise RuntimeError("KNOWN_ELEMENTS names a field PassPostback (schemas/event.py, the .avsc) does not have")

_XSI_NAMESPACE = "http://www.w3.org/2001/XMLSchema-instance"


@dataclass(frozen=True, slots=True)
class Postback:
    """One validated item: the vendor's fields as sent (stripped; empty is ``None``)."""

    fields: dict[str, str | None]
    extra: dict[str, str]
    generated_at: datetime | None

    @property
    def origin(self) -> str:
        return self.fields["origin"]  # type: ignore[return-value]  # validated present

    @property
    def status_code(self) -> str:
        """STATUSCODE, or CODE when a postback carries only that."""
        return self.fields.get("status_code") or self.fields["code"]  # type: ignore[return-value]

    def event_id(self) -> str:
        """Same content, same id: a re-delivered postback is recognisable downstream."""
        # XML 1.0 text cannot hold U+001E or U+001F, so they separate unambiguously.
        parts = [f"{k}\x1f{v}" for k, v in sorted(self.fields.items()) if v is not None]
        parts.append("\x1e")
        if self.extra:
            parts.extend(f"{k}\x1f{v}" for k, v in sorted(self.extra.items()))
        return hashlib.sha256("\x1e".join(parts).encode("utf-8")).hexdigest()[:32]

    def to_event(self, received_at: datetime) -> PassPostback:
        fields = self.fields
        status_code = self.status_code
        return PassPostback(
            event_id=self.event_id(),
            origin=self.origin,
            status_code=status_code,
            outcome=classify(status_code),
            code=fields.get("code"),
            referenced_by=fields.get("referenced_by"),
            reference_value=fields.get("reference_value"),
            custom_pass_id=fields.get("custom_pass_id"),
            pass_data_id=fields.get("pass_data_id"),
            serial_number=fields.get("serial_number"),
            generated_at=self.generated_at,
            timestamp_raw=fields.get("timestamp_raw"),
            received_at=received_at,
            extra=self.extra,
        )


class OutputBudget:
    """What one request may make: ``BODY_FACTOR`` times its body plus ``PER_ITEM`` per item.

    Elements of an enclosing ``POSTBACK`` are copied into every item inside it, and a
    deeply nested element's path is repeated in every leaf's key, so a small body can
    describe huge events. The budget is spent while the items are read (in characters),
    so such a body is refused before it is built, and the encoded events are held to
    it again in bytes (``check_encoded``). Over it: 413 ``event_too_large``.
    """

    BODY_FACTOR = 2
    PER_ITEM = 1024

    __slots__ = ("body_bytes", "items", "max_items", "spent")

    def __init__(self, body_bytes: int, max_items: int = 1000) -> None:
        self.body_bytes = body_bytes
        # Each item costs the producer a record, a future and a callback however small it is.
        self.max_items = max_items
        self.items = 0
        self.spent = 0

    @property
    def allowed(self) -> int:
        return self.BODY_FACTOR * self.body_bytes + self.PER_ITEM * self.items

    def item(self) -> None:
        self.items += 1
        if self.items > self.max_items:
            raise Rejected(413, "too_many_items", f"The request holds more than {self.max_items} postbacks.")

    def spend(self, amount: int) -> None:
        self.spent += amount
        if self.spent > self.allowed:
            raise self.exceeded()

    def check_encoded(self, encoded_bytes: int) -> None:
        if encoded_bytes > self.allowed:
            raise self.exceeded()

    def exceeded(self) -> Rejected:
        return Rejected(
            413, "event_too_large",
            f"The events of this request would exceed {self.allowed} bytes ({self.BODY_FACTOR} x the body "
            f"+ {self.PER_ITEM} per item); nested or inherited elements make them too large.",
        )


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    postbacks: list[Postback]
    recovered: bool


def read_postbacks(body: bytes, content_type: str | None, budget: OutputBudget | None = None) -> ParsedRequest:
    xml = extract_xml(body, content_type or "")
    root, recovered = parse_xml(xml)
    return ParsedRequest(postbacks=postbacks_in(root, budget or OutputBudget(len(body))), recovered=recovered)


# --- the body -------------------------------------------------------------------------

_LEADING_NOISE = b" \t\r\n\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def extract_xml(body: bytes, content_type: str) -> bytes:
    """The XML document in ``body``: the body itself, or its form field ``xml``."""
    if not body.strip():
        raise Rejected(400, "empty_body", "The request body is empty.")
    start = body.lstrip(_LEADING_NOISE)
    if start.startswith(b"<") or body.startswith(_UTF16_BOMS):
        # Raw XML, whatever the content type says: `curl -d @file` labels raw XML as a form.
        return body
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/x-www-form-urlencoded" or start.startswith(b"xml="):
        xml = _form_field(body, b"xml")
        if xml is None:
            raise Rejected(400, "missing_xml_field", "The form body has no `xml` field.")
        if not xml.strip():
            raise Rejected(400, "empty_body", "The form field `xml` is empty.")
        return xml
    raise Rejected(400, "not_xml", "The body is neither XML nor a form with an `xml` field.")


def _form_field(body: bytes, name: bytes) -> bytes | None:
    # Decoded to bytes, not str: the XML declaration, not the form, says the encoding.
    for pair in body.split(b"&"):
        key, _, value = pair.partition(b"=")
        if unquote_to_bytes(key.replace(b"+", b" ")).strip() == name:
            return unquote_to_bytes(value.replace(b"+", b" "))
    return None


# --- the XML --------------------------------------------------------------------------

_parsers = threading.local()


def _parser() -> etree.XMLParser:
    # lxml parsers are not thread-safe; one per thread, built once.
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False,
            load_dtd=False,
            dtd_validation=False,
            no_network=True,
            huge_tree=False,
            remove_comments=True,
            remove_pis=True,
            collect_ids=False,
        )
        _parsers.parser = parser
    return parser


def parse_xml(xml: bytes) -> tuple[etree._Element, bool]:
    """Parse strictly; if that fails, try the one recovery the contract allows
    (docs/contract.md, "The vendor's postback")."""
    failure: etree.XMLSyntaxError | None = None
    root_start = _ROOT_START.match(xml)
    if root_start is None or _WELL_FORMED_ATTRIBUTES.fullmatch(root_start.group("attributes")):
        try:
            return _parse_strict(xml), False
        except etree.XMLSyntaxError as error:
            failure = error
    # Either the strict parse failed, or it was bound to (the vendor's own example
    # always is): a failed parse costs several times a successful one.
    repaired = _without_root_attributes(xml, root_start)
    if repaired is not None:
        try:
            return _parse_strict(repaired), True
        except etree.XMLSyntaxError:
            pass
    if failure is None:  # the shortcut guessed wrong: the strict parse decides
        try:
            return _parse_strict(xml), False
        except etree.XMLSyntaxError as error:
            failure = error
    raise Rejected(400, "invalid_xml", f"The body is not well-formed XML: {_describe(failure)}")


def _parse_strict(xml: bytes) -> etree._Element:
    root = etree.fromstring(xml, _parser())
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        # DTDs are where entity expansion and external fetches live; a postback has none.
        raise Rejected(400, "doctype_forbidden", "Documents with a DOCTYPE are not accepted.")
    return root


def _describe(error: etree.XMLSyntaxError | None) -> str:
    message = str(error.msg or error).strip() if error is not None else ""
    return message[:200] if message else "syntax error"


_ROOT_START = re.compile(
    rb"\A(?P<prolog>(?:\xef\xbb\xbf)?\s*(?:<\?xml[^>]*\?>)?(?:\s*<!--.*?-->|\s*<\?.*?\?>)*\s*)"
    rb"<(?P<name>[A-Za-z_][\w.\-]*(?::[A-Za-z_][\w.\-]*)?)"
    # The attributes end at the first ">", or at "/>": spelt out so that matching never backtracks
    # (a lazy "[^<>]*?" would try "/?>" after every character).
    rb"(?P<attributes>\s[^<>/]*(?:/(?!>)[^<>/]*)*)(?P<close>/?)>",
    re.DOTALL,
)
# What the root may carry for recovery to drop it: namespace and xsi: declarations only.
_DROPPABLE = re.compile(rb"(?:(?:xmlns(?::[\w.\-]+)?|xsi:[\w.\-]+)=(?:\"[^\"]*\"|'[^']*'))+")


# A root start tag's attributes as XML allows them. ASCII names suffice for a shortcut:
# what this misses is tried with recovery first and then, if that fails, strictly.
_WELL_FORMED_ATTRIBUTES = re.compile(rb"(?:\s+[A-Za-z_:][\w.\-:]*\s*=\s*(?:\"[^\"<]*\"|'[^'<]*'))*\s*")


def _without_root_attributes(xml: bytes, match: re.Match[bytes] | None) -> bytes | None:
    """The document with its root's attributes dropped, or None if that could lose data."""
    if match is None:
        return None
    if not _DROPPABLE.fullmatch(re.sub(rb"\s+", b"", match.group("attributes"))):
        return None
    return b"%s<%s%s>%s" % (match.group("prolog"), match.group("name"), match.group("close"), xml[match.end():])


# --- postbacks in the document ---------------------------------------------------------


def _name(element: etree._Element) -> str:
    tag: str = element.tag
    return tag.rsplit("}", 1)[1] if tag[0] == "{" else tag


@dataclass(slots=True)
class _Level:
    """What one element says about the items inside it, and its size in characters."""

    fields: dict[str, str | None]
    extra: dict[str, str]
    size: int = 0


def postbacks_in(root: etree._Element, budget: OutputBudget) -> list[Postback]:
    name = _name(root)
    if name == "POSTBACK":
        return _from_postback(root, _Level({}, {}), 1, budget)
    postbacks = [child for child in root if _name(child) == "POSTBACK"]
    if not postbacks:
        raise Rejected(422, "not_a_postback", f"The root element is <{name[:64]}>, not <POSTBACK>.")
    wrapper = _read_level(root, budget, skip="POSTBACK")
    items: list[Postback] = []
    for postback in postbacks:
        items.extend(_from_postback(postback, wrapper, len(items) + 1, budget))
    return items


def _from_postback(postback: etree._Element, outer: _Level, first_number: int, budget: OutputBudget) -> list[Postback]:
    if postback.find("{*}NOTIFICATION") is None:  # "{*}": in any namespace or none, as _name() reads names
        budget.item()
        return [_validate(_merge(outer, _read_level(postback, budget), budget), first_number)]
    notifications = [child for child in postback if _name(child) == "NOTIFICATION"]
    shared = _merge(outer, _read_level(postback, budget, skip="NOTIFICATION"), budget)
    items = []
    for index, notification in enumerate(notifications):
        budget.item()
        items.append(_validate(_merge(shared, _read_level(notification, budget), budget), first_number + index))
    return items


def _read_level(element: etree._Element, budget: OutputBudget, skip: str | None = None) -> _Level:
    fields: dict[str, str | None] = {}
    extra: dict[str, str] = {}
    spent = budget.spent
    _read_attributes(element, "", extra, budget)
    # The known fields' values are spent together after the loop: their sum is bounded by the
    # body, and nothing else in the loop can fail but the budget, so the outcome is the same.
    values = 0
    seen: dict[str, int] = {}
    for child in element:
        name = _name(child)
        if name == skip:
            continue
        seen[name] = count = seen.get(name, 0) + 1
        field = KNOWN_ELEMENTS.get(name)
        if field is not None and count == 1 and len(child) == 0:
            text = child.text
            fields[field] = value = text.strip() or None if text else None
            if value is not None:
                values += len(value)
            if child.attrib:
                _read_attributes(child, name + "/", extra, budget)
        else:
            _flatten(child, name if count == 1 else f"{name}[{count}]", extra, budget)
    budget.spend(values)
    return _Level(fields, extra, budget.spent - spent)


def _flatten(element: etree._Element, path: str, extra: dict[str, str], budget: OutputBudget) -> None:
    _read_attributes(element, path + "/", extra, budget)
    if len(element) == 0:
        extra[path] = text = (element.text or "").strip()
        budget.spend(len(path) + len(text))
        return
    text = (element.text or "").strip()
    if text:
        extra[path] = text
        budget.spend(len(path) + len(text))
    seen: dict[str, int] = {}
    for child in element:
        name = _name(child)
        seen[name] = count = seen.get(name, 0) + 1
        _flatten(child, f"{path}/{name}" if count == 1 else f"{path}/{name}[{count}]", extra, budget)


def _read_attributes(element: etree._Element, prefix: str, extra: dict[str, str], budget: OutputBudget) -> None:
    for key, value in element.items():
        if key.startswith("{" + _XSI_NAMESPACE + "}"):
            continue  # schema locations: about the document, not the pass
        path = f"{prefix}@{key.rsplit('}', 1)[-1]}"
        extra[path] = value
        budget.spend(len(path) + len(value))


def _merge(outer: _Level, inner: _Level, budget: OutputBudget) -> _Level:
    """The inner level's values win; an outer value they hide moves to ``extra`` as ``../PATH``."""
    if not outer.fields and not outer.extra:  # a lone POSTBACK: nothing to inherit
        return inner
    # Every inherited value is copied into the item: it counts once per item.
    budget.spend(outer.size)
    fields = dict(outer.fields)
    extra = dict(inner.extra)
    hidden: dict[str, str | None] = {}
    for field, value in inner.fields.items():
        if field in fields and fields[field] != value:
            hidden["../" + _element_of(field)] = fields[field]
        fields[field] = value
    for path, value in (*outer.extra.items(), *hidden.items()):
        if value is None:
            continue
        while path in extra:
            if extra[path] == value:
                break
            path = "../" + path
        else:
            extra[path] = value
    return _Level(fields, extra, outer.size + inner.size)


def _element_of(field: str) -> str:
    return next(name for name, known in KNOWN_ELEMENTS.items() if known == field)


def _validate(level: _Level, number: int) -> Postback:
    fields = level.fields
    if not fields.get("origin"):
        raise Rejected(422, "missing_origin", f"Postback {number} has no ORIGIN.")
    if not fields.get("status_code") and not fields.get("code"):
        raise Rejected(422, "missing_status_code", f"Postback {number} has neither STATUSCODE nor CODE.")
    raw = fields.get("timestamp_raw")
    generated_at = parse_timestamp(raw, number) if raw else None
    return Postback(fields=fields, extra=level.extra, generated_at=generated_at)


def parse_timestamp(raw: str, number: int = 1) -> datetime | None:
    """UTC time of an ISO 8601 TIMESTAMP; ``None`` when it names no offset (local time of where?)."""
    try:
        value = datetime.fromisoformat(raw)
        if value.tzinfo is None:
            return None
        return value.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        shown = raw if len(raw) <= 64 else raw[:61] + "..."
        raise Rejected(
            422, "invalid_timestamp", f"Postback {number} has TIMESTAMP {shown!r}, which is not ISO 8601."
        ) from None
