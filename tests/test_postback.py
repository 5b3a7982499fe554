"""Parsing and classification of the vendor's postbacks (ingest/postback.py)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from passpost.ingest.postback import (
    OutputBudget,
    Rejected,
    extract_xml,
    parse_xml,
    postbacks_in,
    read_postbacks,
)
from passpost.schemas.event import Outcome

DATA = Path(__file__).parent / "data"
VENDOR_EXAMPLE = (DATA / "vendor_example.xml").read_bytes()
RECEIVED = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)


def postback(status: str = "N801", **elements: str) -> bytes:
    fields = {"ORIGIN": "GENERATE_PASS", "STATUSCODE": status, "SERIALNUMBER": "SN-1", **elements}
    body = "".join(f"<{name}>{value}</{name}>" for name, value in fields.items() if value is not None)
    return f"<POSTBACK>{body}</POSTBACK>".encode()


def rejected(body: bytes, content_type: str = "application/xml") -> Rejected:
    with pytest.raises(Rejected) as caught:
        read_postbacks(body, content_type)
    return caught.value


# --- the vendor's example ------------------------------------------------------------


def test_vendor_example_is_kept_exactly_as_printed() -> None:
    # The line break inside `xsi:no / NamespaceSchemaLocation` is the point of this file.
    assert b'xsi:no\nNamespaceSchemaLocation ="http://www.skycore.com/schema/pass-postback.xsd"' in VENDOR_EXAMPLE


def test_vendor_example_is_recovered_with_every_field() -> None:
    parsed = read_postbacks(VENDOR_EXAMPLE, "application/xml")
    assert parsed.recovered is True
    [item] = parsed.postbacks
    event = item.to_event(RECEIVED)
    assert event.origin == "GENERATE_PASS"
    assert event.status_code == "N801"
    assert event.outcome is Outcome.SUCCESS
    assert event.code is None
    assert event.referenced_by == "Email"
    assert event.reference_value == "vikmut@mail.com"
    assert event.custom_pass_id == "ID-123323"
    assert event.pass_data_id == "40556"
    assert event.serial_number == "5294CE37878AE-112613-113711"
    assert event.timestamp_raw == "2013-11-26T11:37:11-05:00"
    assert event.generated_at == datetime(2013, 11, 26, 16, 37, 11, tzinfo=timezone.utc)
    assert event.received_at == RECEIVED
    assert event.extra == {}


def test_well_formed_document_is_not_counted_as_recovered() -> None:
    assert read_postbacks(postback(), "").recovered is False


def test_recovery_refuses_to_drop_attributes_that_carry_data() -> None:
    broken = b'<POSTBACK batch="7" xsi:no\nNamespaceSchemaLocation="x"><ORIGIN>A</ORIGIN><STATUSCODE>N801</STATUSCODE></POSTBACK>'
    assert rejected(broken).status == 400  # recovery would have dropped batch="7": refused, not repaired


def test_recovery_keeps_the_xml_declaration_and_comments_before_the_root() -> None:
    body = b'<?xml version="1.0" encoding="UTF-8"?>\n<!-- vendor -->\n' + VENDOR_EXAMPLE
    parsed = read_postbacks(body, "text/xml")
    assert parsed.recovered and parsed.postbacks[0].fields["serial_number"] == "5294CE37878AE-112613-113711"


def test_recovery_does_not_invent_namespaces_children_need() -> None:
    # Children use the xsi prefix the dropped attributes declared: no silent loss, a 400.
    body = (b'<POSTBACK xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:no\nNamespaceSchemaLocation="x">'
            b'<ORIGIN xsi:nil="true"/></POSTBACK>')
    assert rejected(body).code == "invalid_xml"


# --- bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["", "application/xml", "text/xml; charset=utf-8", "text/plain",
                                          "application/octet-stream", "application/x-www-form-urlencoded"])
def test_raw_xml_is_accepted_whatever_the_content_type(content_type: str) -> None:
    assert len(read_postbacks(postback(), content_type).postbacks) == 1


def test_form_body_with_xml_field() -> None:
    body = b"foo=bar&xml=" + quote_plus(VENDOR_EXAMPLE).encode() + b"&other=1"
    [item] = read_postbacks(body, "application/x-www-form-urlencoded").postbacks
    assert item.fields["reference_value"] == "vikmut@mail.com"


def test_form_field_keeps_non_ascii_bytes_for_the_xml_declaration_to_decode() -> None:
    xml = '<?xml version="1.0" encoding="ISO-8859-1"?><POSTBACK><ORIGIN>GÉNÉRER</ORIGIN><STATUSCODE>N801</STATUSCODE></POSTBACK>'
    body = b"xml=" + quote(xml.encode("latin-1")).encode()
    [item] = read_postbacks(body, "application/x-www-form-urlencoded; charset=ISO-8859-1").postbacks
    assert item.origin == "GÉNÉRER"


def test_form_body_without_xml_field_is_400() -> None:
    error = rejected(b"foo=bar&baz=1", "application/x-www-form-urlencoded")
    assert (error.status, error.code) == (400, "missing_xml_field")


@pytest.mark.parametrize("body", [b"", b"   \r\n\t "])
def test_empty_body_is_400(body: bytes) -> None:
    error = rejected(body)
    assert (error.status, error.code) == (400, "empty_body")


def test_empty_xml_field_is_400() -> None:
    assert rejected(b"xml=", "application/x-www-form-urlencoded").code == "empty_body"


@pytest.mark.parametrize("body", [b'{"json": true}', b"hello", b"\x00\x01\x02", b"\xff" * 10])
def test_not_xml_is_400(body: bytes) -> None:
    assert rejected(body, "application/json").status == 400


def test_utf8_bom_and_leading_whitespace_are_fine() -> None:
    assert read_postbacks(b"\xef\xbb\xbf\n  " + postback(), "").postbacks


def test_utf16_document_is_read() -> None:
    xml = '<?xml version="1.0" encoding="UTF-16"?><POSTBACK><ORIGIN>GENERATE_PASS</ORIGIN><STATUSCODE>N811</STATUSCODE></POSTBACK>'
    [item] = read_postbacks(xml.encode("utf-16"), "").postbacks
    assert item.status_code == "N811"


@pytest.mark.parametrize("cut", [1, 10, 40, 80, len(VENDOR_EXAMPLE) - 3])
def test_truncated_body_is_400(cut: int) -> None:
    error = rejected(postback()[:cut] if cut < len(postback()) else VENDOR_EXAMPLE[:cut])
    assert (error.status, error.code) == (400, "invalid_xml")


def test_huge_nesting_is_refused_not_crashed() -> None:
    depth = 100_000
    body = b"<POSTBACK>" + b"<A>" * depth + b"</A>" * depth + b"</POSTBACK>"
    assert rejected(body).status in (400, 422)


# --- hardened parsing -----------------------------------------------------------------


def test_doctype_is_refused() -> None:
    body = b'<!DOCTYPE POSTBACK><POSTBACK><ORIGIN>A</ORIGIN><STATUSCODE>N801</STATUSCODE></POSTBACK>'
    error = rejected(body)
    assert (error.status, error.code) == (400, "doctype_forbidden")


def test_external_entity_is_never_resolved(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    body = (f'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x SYSTEM "file://{secret}">]>'
            f"<POSTBACK><ORIGIN>&x;</ORIGIN><STATUSCODE>N801</STATUSCODE></POSTBACK>").encode()
    error = rejected(body)
    assert error.status == 400
    assert "TOP-SECRET" not in error.detail


def test_billion_laughs_is_refused_quickly() -> None:
    entities = '<!ENTITY a0 "lol">' + "".join(
        f'<!ENTITY a{i} "{("&a" + str(i - 1) + ";") * 10}">' for i in range(1, 10)
    )
    body = f'<!DOCTYPE lolz [{entities}]><POSTBACK><ORIGIN>&a9;</ORIGIN><STATUSCODE>N801</STATUSCODE></POSTBACK>'
    assert rejected(body.encode()).status == 400


def test_network_entity_is_refused() -> None:
    body = (b'<!DOCTYPE p [<!ENTITY x SYSTEM "http://127.0.0.1:9/x">]>'
            b"<POSTBACK><ORIGIN>&x;</ORIGIN><STATUSCODE>N801</STATUSCODE></POSTBACK>")
    assert rejected(body).status == 400


# --- what is a postback ---------------------------------------------------------------


def test_wrong_root_is_422() -> None:
    error = rejected(b"<ORDER><ORIGIN>A</ORIGIN></ORDER>")
    assert (error.status, error.code) == (422, "not_a_postback")


def test_missing_origin_is_422() -> None:
    error = rejected(b"<POSTBACK><STATUSCODE>N801</STATUSCODE></POSTBACK>")
    assert (error.status, error.code) == (422, "missing_origin")


def test_empty_origin_is_422() -> None:
    assert rejected(postback(ORIGIN="")).code == "missing_origin"


def test_missing_status_code_is_422() -> None:
    error = rejected(b"<POSTBACK><ORIGIN>GENERATE_PASS</ORIGIN></POSTBACK>")
    assert (error.status, error.code) == (422, "missing_status_code")


def test_code_alone_stands_in_for_statuscode() -> None:
    [item] = read_postbacks(b"<POSTBACK><ORIGIN>GENERATE_PASS</ORIGIN><CODE>N803</CODE></POSTBACK>", "").postbacks
    event = item.to_event(RECEIVED)
    assert (event.status_code, event.code, event.outcome) == ("N803", "N803", Outcome.FAILURE)


def test_code_and_statuscode_are_both_kept() -> None:
    [item] = read_postbacks(postback("N801", CODE="C200"), "").postbacks
    event = item.to_event(RECEIVED)
    assert (event.status_code, event.code) == ("N801", "C200")


@pytest.mark.parametrize("timestamp", ["yesterday", "2013-13-45T99:00:00", "26/11/2013 11:37", "2013-11-26T11:37:11-25:00"])
def test_timestamp_that_is_not_iso8601_is_422(timestamp: str) -> None:
    error = rejected(postback(TIMESTAMP=timestamp))
    assert (error.status, error.code) == (422, "invalid_timestamp")


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2013-11-26T11:37:11-05:00", datetime(2013, 11, 26, 16, 37, 11, tzinfo=timezone.utc)),
        ("2013-11-26T16:37:11Z", datetime(2013, 11, 26, 16, 37, 11, tzinfo=timezone.utc)),
        ("2013-11-26T16:37:11.123456+00:00", datetime(2013, 11, 26, 16, 37, 11, 123456, tzinfo=timezone.utc)),
        ("20131126T113711-0500", datetime(2013, 11, 26, 16, 37, 11, tzinfo=timezone.utc)),
        ("2013-11-26T11:37:11", None),  # no offset: a local time of an unknown place
    ],
)
def test_iso8601_timestamps(timestamp: str, expected: datetime | None) -> None:
    [item] = read_postbacks(postback(TIMESTAMP=timestamp), "").postbacks
    event = item.to_event(RECEIVED)
    assert event.generated_at == expected
    assert event.timestamp_raw == timestamp


def test_empty_elements_become_null() -> None:
    body = postback(CUSTOMPASSID="", REFERENCEDBY="  ", TIMESTAMP="")
    [item] = read_postbacks(body, "").postbacks
    event = item.to_event(RECEIVED)
    assert event.custom_pass_id is None and event.referenced_by is None
    assert event.timestamp_raw is None and event.generated_at is None


def test_self_closing_elements_become_null() -> None:
    body = b"<POSTBACK><ORIGIN>GENERATE_PASS</ORIGIN><STATUSCODE>N801</STATUSCODE><CUSTOMPASSID/></POSTBACK>"
    assert read_postbacks(body, "").postbacks[0].to_event(RECEIVED).custom_pass_id is None


# --- Appendix D -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "outcome"),
    [("N801", Outcome.SUCCESS), ("N802", Outcome.FAILURE), ("N803", Outcome.FAILURE), ("N811", Outcome.FAILURE),
     ("E100", Outcome.FAILURE), ("E", Outcome.FAILURE), ("N899", Outcome.UNKNOWN), ("X1", Outcome.UNKNOWN),
     (" N801 ", Outcome.SUCCESS)],
)
def test_every_appendix_d_code_is_classified(status: str, outcome: Outcome) -> None:
    [item] = read_postbacks(postback(status), "").postbacks
    event = item.to_event(RECEIVED)
    assert event.outcome is outcome
    assert event.status_code == status.strip()


# --- nothing is lost ---------------------------------------------------------------------


def test_passdata_block_goes_to_extra_by_path() -> None:
    body = postback(PASSDATA="<BARCODEVALUE>123</BARCODEVALUE><HEADERLABEL1>Gate</HEADERLABEL1><HEADERLABEL1>B</HEADERLABEL1>")
    [item] = read_postbacks(body, "").postbacks
    assert item.extra == {
        "PASSDATA/BARCODEVALUE": "123",
        "PASSDATA/HEADERLABEL1": "Gate",
        "PASSDATA/HEADERLABEL1[2]": "B",
    }


def test_unknown_elements_and_attributes_are_kept() -> None:
    body = (b'<POSTBACK xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="x" version="2">'
            b"<ORIGIN>GENERATE_PASS</ORIGIN><STATUSCODE kind=\"vendor\">N801</STATUSCODE>"
            b"<NEWFIELD>v</NEWFIELD><EMPTY/></POSTBACK>")
    [item] = read_postbacks(body, "").postbacks
    assert item.extra == {"@version": "2", "STATUSCODE/@kind": "vendor", "NEWFIELD": "v", "EMPTY": ""}


def test_repeated_known_element_is_not_lost() -> None:
    body = b"<POSTBACK><ORIGIN>A</ORIGIN><STATUSCODE>N801</STATUSCODE><SERIALNUMBER>1</SERIALNUMBER><SERIALNUMBER>2</SERIALNUMBER></POSTBACK>"
    [item] = read_postbacks(body, "").postbacks
    assert item.fields["serial_number"] == "1"
    assert item.extra == {"SERIALNUMBER[2]": "2"}


def test_cdata_and_entities_in_text() -> None:
    body = b"<POSTBACK><ORIGIN><![CDATA[GEN<ERATE]]></ORIGIN><STATUSCODE>N801</STATUSCODE><CUSTOMPASSID>a&amp;b&#233;</CUSTOMPASSID></POSTBACK>"
    [item] = read_postbacks(body, "").postbacks
    assert item.origin == "GEN<ERATE" and item.fields["custom_pass_id"] == "a&bé"


def test_default_namespace_is_read_by_local_name() -> None:
    body = b'<POSTBACK xmlns="http://www.skycore.com/ns"><ORIGIN>A</ORIGIN><STATUSCODE>N811</STATUSCODE></POSTBACK>'
    assert read_postbacks(body, "").postbacks[0].status_code == "N811"


# --- bundles ------------------------------------------------------------------------------


def notification(serial: str, status: str = "N801") -> str:
    return (f"<NOTIFICATION><STATUSCODE>{status}</STATUSCODE><REFERENCEDBY>Email</REFERENCEDBY>"
            f"<REFERENCEVALUE>u{serial}@example.com</REFERENCEVALUE><SERIALNUMBER>{serial}</SERIALNUMBER>"
            f"<TIMESTAMP>2013-11-26T11:37:11-05:00</TIMESTAMP></NOTIFICATION>")


def test_postback_with_notification_items_gives_one_event_each_inheriting_origin() -> None:
    body = f"<POSTBACK><ORIGIN>GENERATE_PASS</ORIGIN>{''.join(notification(str(i)) for i in range(300))}</POSTBACK>"
    items = read_postbacks(body.encode(), "").postbacks
    assert len(items) == 300
    assert [item.fields["serial_number"] for item in items] == [str(i) for i in range(300)]
    assert all(item.origin == "GENERATE_PASS" for item in items)
    assert len({item.event_id() for item in items}) == 300


def test_item_value_wins_and_the_enclosing_one_is_kept() -> None:
    body = ("<POSTBACK><ORIGIN>GENERATE_PASS</ORIGIN><STATUSCODE>N801</STATUSCODE><BATCH>9</BATCH>"
            "<NOTIFICATION><STATUSCODE>N811</STATUSCODE><SERIALNUMBER>1</SERIALNUMBER></NOTIFICATION></POSTBACK>")
    [item] = read_postbacks(body.encode(), "").postbacks
    assert item.status_code == "N811"
    assert item.extra == {"BATCH": "9", "../STATUSCODE": "N801"}


def test_wrapper_holding_several_postbacks() -> None:
    body = b"<POSTBACKS>" + postback("N801") + postback("N802", SERIALNUMBER="SN-2") + b"</POSTBACKS>"
    items = read_postbacks(body, "").postbacks
    assert [item.status_code for item in items] == ["N801", "N802"]


def test_one_invalid_item_rejects_the_whole_request() -> None:
    body = ("<POSTBACK><ORIGIN>GENERATE_PASS</ORIGIN>" + notification("1") +
            "<NOTIFICATION><SERIALNUMBER>2</SERIALNUMBER></NOTIFICATION></POSTBACK>")
    error = rejected(body.encode())
    assert (error.status, error.code) == (422, "missing_status_code")
    assert "Postback 2" in error.detail


def test_wrapper_without_postbacks_is_422() -> None:
    assert rejected(b"<POSTBACKS><OTHER/></POSTBACKS>").code == "not_a_postback"


# --- event id -----------------------------------------------------------------------------


def test_event_id_is_deterministic_and_content_sensitive() -> None:
    first = read_postbacks(postback(), "").postbacks[0].event_id()
    again = read_postbacks(postback(), "").postbacks[0].event_id()
    pretty = read_postbacks(postback().replace(b"><", b">\n  <"), "").postbacks[0].event_id()
    other = read_postbacks(postback("N802"), "").postbacks[0].event_id()
    assert first == again == pretty != other
    assert len(first) == 32


def test_rejection_detail_never_echoes_personal_data() -> None:
    body = b"<POSTBACK><REFERENCEVALUE>someone@example.com</REFERENCEVALUE><STATUSCODE>N801</STATUSCODE></POSTBACK>"
    assert "someone@example.com" not in rejected(body).detail


def test_stages_can_be_used_alone() -> None:
    root, recovered = parse_xml(extract_xml(postback(), ""))
    assert not recovered and postbacks_in(root, OutputBudget(len(postback())))[0].origin == "GENERATE_PASS"


def test_root_attributes_the_shortcut_does_not_know_still_parse_strictly() -> None:
    body = '<POSTBACK nöte="1"><ORIGIN>A</ORIGIN><STATUSCODE>N801</STATUSCODE></POSTBACK>'.encode()
    parsed = read_postbacks(body, "")
    assert not parsed.recovered and parsed.postbacks[0].extra == {"@nöte": "1"}


def test_event_id_separates_fields_unambiguously() -> None:
    one = read_postbacks(postback(CUSTOMPASSID="a", PASSDATAID="b"), "").postbacks[0].event_id()
    two = read_postbacks(postback(CUSTOMPASSID="ab", PASSDATAID=""), "").postbacks[0].event_id()
    assert one != two
