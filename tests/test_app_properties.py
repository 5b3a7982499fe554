"""Property: nothing a client sends makes the ingress answer a 5xx other than 503.

Bodies are random bytes, XML-like fragments, mutations of the vendor's example and form
bodies; headers and query strings are random too. Every answer must be one of the
statuses the contract lists (docs/contract.md, "The HTTP answers"), with a JSON error body for every refusal.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote_plus

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from passpost.ingest.app import POSTBACK_PATH, create_app
from tests.kafka_helpers import create_topics
from tests.test_app import TOKEN, make_settings

pytestmark = pytest.mark.kafka

VENDOR_EXAMPLE = (Path(__file__).parent / "data" / "vendor_example.xml").read_bytes()
ALLOWED = {200, 400, 401, 405, 413, 422, 503}

ELEMENTS = ["POSTBACK", "NOTIFICATION", "ORIGIN", "STATUSCODE", "CODE", "REFERENCEVALUE", "SERIALNUMBER",
            "TIMESTAMP", "PASSDATA", "CUSTOMPASSID", "X"]


@st.composite
def xml_like(draw: st.DrawFn, depth: int = 0) -> str:
    name = draw(st.sampled_from(ELEMENTS))
    if depth > 3 or draw(st.booleans()):
        text = draw(st.one_of(st.text(max_size=30), st.sampled_from(["N801", "N811", "E1", "2013-11-26T11:37:11-05:00",
                                                                    "&amp;", "&bogus;", "<![CDATA[x]]>", "]]>"])))
        return f"<{name}>{text}</{name}>"
    children = draw(st.lists(xml_like(depth + 1), max_size=4))
    attributes = draw(st.sampled_from(["", ' a="1"', ' xsi:no\nNamespaceSchemaLocation="x"', " broken=", ' xmlns="u"']))
    return f"<{name}{attributes}>{''.join(children)}</{name}>"


@st.composite
def mutated_example(draw: st.DrawFn) -> bytes:
    data = bytearray(VENDOR_EXAMPLE)
    for _ in range(draw(st.integers(1, 5))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        if action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[position:position + draw(st.integers(1, 20))]
        elif position < len(data):
            data[position] = draw(st.integers(0, 255))
    return bytes(data)


bodies = st.one_of(
    st.binary(max_size=600),
    xml_like().map(str.encode),
    st.tuples(st.sampled_from(["", '<?xml version="1.0"?>', '<?xml version="1.0" encoding="UTF-16"?>',
                               "<!DOCTYPE POSTBACK>", "\ufeff"]), xml_like()).map(lambda t: (t[0] + t[1]).encode()),
    mutated_example(),
    xml_like().map(lambda x: b"xml=" + quote_plus(x).encode()),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@pytest.fixture(scope="module")
def client(kafka_bootstrap: str) -> Iterator[TestClient]:
    settings_ = make_settings(kafka_bootstrap, max_body_bytes=4096)
    create_topics(kafka_bootstrap, [settings_.events_topic, settings_.dead_letter_topic])
    with TestClient(create_app(settings_), raise_server_exceptions=False) as test_client:
        yield test_client


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(
    body=bodies,
    content_type=st.one_of(st.sampled_from(["application/xml", "text/xml", "application/x-www-form-urlencoded",
                                            "multipart/form-data; boundary=x", "application/json"]), header_text),
    authorization=st.one_of(st.just(f"Bearer {TOKEN}"), header_text.map(lambda t: "Basic " + t),
                            header_text.map(lambda t: "Bearer " + t)),
    request_id=header_text,
    method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT"]),
    query=st.one_of(st.just(""), header_text.map(lambda t: "token=" + quote_plus(t))),
)
def test_no_input_gets_a_5xx_other_than_503(
    client: TestClient, body: bytes, content_type: str, authorization: str, request_id: str, method: str, query: str
) -> None:
    response = client.request(
        method, f"{POSTBACK_PATH}?{query}", content=body,
        headers={"Content-Type": content_type, "Authorization": authorization, "X-Request-ID": request_id},
    )
    assert response.status_code in ALLOWED, (response.status_code, response.text)
    if response.status_code != 200:
        error = response.json()
        assert set(error) == {"error", "detail"}
