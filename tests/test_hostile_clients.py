"""A live `passpost serve` against what an attacker sends (issue 9; docs/contract.md, "The HTTP answers").

Every request gets a definite answer and none is 500; what one request can make the
server hold or write is bounded; connection limits (ingest/connection.py) act before
credentials. Raw sockets are used where an HTTP client would tidy the request up.
The server runs with short timeouts so that the slow-client cases take seconds.
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.kafka_helpers import create_topics, read_all, unique_topic
from tests.live import LiveIngress, live_ingress

pytestmark = pytest.mark.kafka

TOKEN = "hostile-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VENDOR_EXAMPLE = (Path(__file__).parent / "data" / "vendor_example.xml").read_bytes()
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 2.0
MAX_CONNECTIONS = 40


class Server:
    def __init__(self, ingress: LiveIngress, bootstrap: str, events: str, dead: str) -> None:
        self.ingress = ingress
        self.url = ingress.url
        self.port = int(ingress.url.rsplit(":", 1)[1])
        self.bootstrap = bootstrap
        self.events = events
        self.dead = dead

    def post(self, body: bytes, *, path: str = "/postbacks/passes", headers: dict[str, str] | None = None,
             timeout: float = 20) -> httpx.Response:
        return httpx.post(self.url + path, content=body, headers=headers if headers is not None else AUTH,
                          timeout=timeout)

    def raw(self, data: bytes, *, read_timeout: float = 10) -> tuple[bytes, float]:
        """Send ``data`` on a new connection; return all the server sent and when it closed."""
        with socket.create_connection(("127.0.0.1", self.port)) as sock:
            sock.sendall(data)
            return read_until_closed(sock, read_timeout)

    def peak_rss_mib(self) -> float:
        return _status_kib(self.ingress.process.pid, "VmHWM") / 1024

    def rss_mib(self) -> float:
        return _status_kib(self.ingress.process.pid, "VmRSS") / 1024

    def log(self) -> str:
        return self.ingress.log.read_text(errors="replace")


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    started = time.monotonic()
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return received, time.monotonic() - started


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response[9:12])


def error_of(response: bytes) -> str:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])["error"]


# Every case runs against both servers of PASSPOST_SERVER: uvicorn with ingest/connection.py's
# protocol, and the ingress's own (ingest/protocol.py, issue 22).
@pytest.fixture(scope="module", params=["uvicorn", "protocol"])
def server(request: pytest.FixtureRequest, kafka_bootstrap: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    events, dead = unique_topic("hostile-events"), unique_topic("hostile-dlq")
    create_topics(kafka_bootstrap, [events, dead])
    env = {"PASSPOST_SERVER": request.param,
           "PASSPOST_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "PASSPOST_INGEST_TOKENS": TOKEN,
           "PASSPOST_EVENTS_TOPIC": events, "PASSPOST_DEAD_LETTER_TOPIC": dead,
           "PASSPOST_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT), "PASSPOST_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
           "PASSPOST_MAX_CONNECTIONS": str(MAX_CONNECTIONS)}
    log = tmp_path_factory.mktemp("hostile") / "serve.log"
    with live_ingress(env, log) as ingress:
        yield Server(ingress, kafka_bootstrap, events, dead)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-5000:]


def postback(serial: str, status: str = "N801", extra: str = "") -> bytes:
    return (f"<POSTBACK><ORIGIN>GENERATE_PASS</ORIGIN><STATUSCODE>{status}</STATUSCODE>"
            f"<SERIALNUMBER>{serial}</SERIALNUMBER>{extra}</POSTBACK>").encode()


def dead_letters_with(server: Server, body: bytes, expected: int = 1) -> list[str]:
    records = read_all(server.bootstrap, server.dead, timeout=15)
    return [dict(record.headers)["error"].decode() for record in records if record.value == body][:expected]


def events_keyed(server: Server, key: bytes) -> int:
    return sum(1 for record in read_all(server.bootstrap, server.events, timeout=15) if record.key == key)


# -- 1. credentials in any encoding --------------------------------------------------------


@pytest.mark.parametrize("query", ["token=%FF", "token=%E2%82%AC", "token=%C3%28", "token=%00", "token=%"])
def test_a_query_token_in_any_encoding_is_refused_not_500_and_a_valid_bearer_still_wins(
        server: Server, query: str) -> None:
    alone = server.post(postback("q-alone"), path=f"/postbacks/passes?{query}", headers={})
    assert alone.status_code == 401 and alone.json()["error"] == "unauthorized"
    with_bearer = server.post(postback("q-bearer"), path=f"/postbacks/passes?{query}")
    assert with_bearer.status_code == 200, with_bearer.text


def test_a_percent_escaped_query_token_is_compared_as_its_bytes(server: Server) -> None:
    escaped = "".join(f"%{byte:02X}" for byte in TOKEN.encode())
    assert server.post(postback("escaped"), path=f"/postbacks/passes?token={escaped}", headers={}).status_code == 200


@pytest.mark.parametrize("header", [b"Authorization: Bearer \xff\xfe", b"Authorization: Basic \xff==",
                                    b"Authorization: Basic w7/DvA==", b"X-Request-ID: \xe2\x82\xac",
                                    b"Content-Type: application/x-www-form-urlencoded; charset=\xff"])
def test_headers_with_bytes_of_any_encoding_get_a_definite_answer(server: Server, header: bytes) -> None:
    body = postback("enc")
    response, _ = server.raw(b"POST /postbacks/passes?token=" + TOKEN.encode() + b" HTTP/1.1\r\nHost: x\r\n" + header +
                             b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    assert status_of(response) in (200, 400, 401), response


# -- 2. and 3. what one request may make ------------------------------------------------------


def test_a_small_postback_that_nests_into_a_huge_event_is_refused_413_and_dead_lettered(server: Server) -> None:
    # 13.9 KB that flattened into a 1.53 MB event once: every leaf's key repeats the path.
    nested = "<a>" * 100 + "<b/>" * 3000 + "</a>" * 100
    body = postback("deep", extra=nested)
    assert len(body) < 16_000
    started = time.monotonic()
    response = server.post(body)
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "event_too_large"
    assert time.monotonic() - started < 2
    assert dead_letters_with(server, body) == ["event_too_large"]
    assert events_keyed(server, b"deep") == 0


def test_items_inheriting_a_large_postback_element_are_refused_not_multiplied(server: Server) -> None:
    shared = "<NOTE>" + "x" * 200_000 + "</NOTE>"
    items = "".join(f"<NOTIFICATION><SERIALNUMBER>amp-{i}</SERIALNUMBER></NOTIFICATION>" for i in range(300))
    body = f"<POSTBACK><ORIGIN>GENERATE_PASS</ORIGIN><STATUSCODE>N801</STATUSCODE>{shared}{items}</POSTBACK>".encode()
    rss_before = server.rss_mib()
    response = server.post(body)
    assert response.status_code == 413 and response.json()["error"] == "event_too_large", response.text
    assert dead_letters_with(server, body) == ["event_too_large"]
    assert events_keyed(server, b"amp-0") == 0
    assert server.rss_mib() - rss_before < 20, "refused before the 60 MB of events were built"


def test_items_within_the_budget_keep_their_inherited_elements(server: Server) -> None:
    items = "".join(f"<NOTIFICATION><SERIALNUMBER>keep-{i}</SERIALNUMBER></NOTIFICATION>" for i in range(300))
    body = (f"<POSTBACK><ORIGIN>GENERATE_PASS</ORIGIN><STATUSCODE>N801</STATUSCODE><CAMPAIGN>winter</CAMPAIGN>"
            f"{items}</POSTBACK>").encode()
    response = server.post(body)
    assert response.status_code == 200 and response.json()["events"] == 300, response.text


def test_an_event_the_topic_refuses_as_too_large_is_413_and_dead_lettered(
        server: Server, kafka_bootstrap: str, tmp_path: Path) -> None:
    # A topic created elsewhere with a smaller max.message.bytes than the ingress expects.
    events, dead = unique_topic("small-events"), unique_topic("small-dlq")
    create_topics(kafka_bootstrap, [dead])
    _create_topic_with_config(kafka_bootstrap, events, {"max.message.bytes": "2000"})
    env = {"PASSPOST_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "PASSPOST_INGEST_TOKENS": TOKEN,
           "PASSPOST_EVENTS_TOPIC": events, "PASSPOST_DEAD_LETTER_TOPIC": dead, "PASSPOST_KAFKA_COMPRESSION": "none"}
    body = postback("big", extra="<NOTE>" + "y" * 5000 + "</NOTE>")
    with live_ingress(env, tmp_path / "serve.log") as ingress:
        for _ in range(2):  # the same answer every time: a permanent refusal, never 503
            response = httpx.post(ingress.url + "/postbacks/passes", content=body, headers=AUTH, timeout=20)
            assert response.status_code == 413 and response.json()["error"] == "event_too_large", response.text
    records = read_all(kafka_bootstrap, dead, expected=2, timeout=15)
    assert [record.value for record in records] == [body, body]
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def _create_topic_with_config(bootstrap: str, name: str, config: dict[str, str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from tests.kafka_helpers import run_sync

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(name, 1, 1, topic_configs=config)])
        finally:
            await admin.close()

    run_sync(create())
    create_topics(bootstrap, [name])  # waits for the leader


def one_mib_postback(index: int) -> bytes:
    filler = "".join(f"<F{i % 50}>{'v' * 40}</F{i % 50}>" for i in range(19_000))
    return postback(f"mib-{index}", extra=filler)


def one_mib_bundle(index: int) -> bytes:
    # As many items as a request may hold (PASSPOST_MAX_ITEMS), each with ~1 KiB of its own.
    items = "".join(f"<NOTIFICATION><SERIALNUMBER>b{index}-{i}</SERIALNUMBER><STATUSCODE>N801</STATUSCODE>"
                    f"<NOTE>{'n' * 900}</NOTE></NOTIFICATION>" for i in range(1000))
    return f"<POSTBACK><ORIGIN>GENERATE_PASS</ORIGIN>{items}</POSTBACK>".encode()


def test_more_items_than_a_request_may_hold_are_refused_413_and_dead_lettered(server: Server) -> None:
    items = "".join(f"<NOTIFICATION><SERIALNUMBER>many-{i}</SERIALNUMBER></NOTIFICATION>" for i in range(1001))
    body = f"<POSTBACK><ORIGIN>GENERATE_PASS</ORIGIN><STATUSCODE>N801</STATUSCODE>{items}</POSTBACK>".encode()
    response = server.post(body)
    assert response.status_code == 413 and response.json()["error"] == "too_many_items", response.text
    assert dead_letters_with(server, body) == ["too_many_items"]
    assert events_keyed(server, b"many-0") == 0


@pytest.mark.parametrize("make_body", [one_mib_postback, one_mib_bundle], ids=["one-item", "bundle"])
def test_peak_memory_stays_under_150_mib_with_32_concurrent_1_mib_bodies(server: Server, make_body) -> None:
    bodies = [make_body(i) for i in range(32)]
    assert all(900_000 < len(body) <= 1024 * 1024 for body in bodies)
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(lambda body: server.post(body, timeout=60).status_code, bodies))
    assert set(statuses) == {200}, statuses
    peak = server.peak_rss_mib()
    print(f"ingress peak RSS after 32 concurrent 1 MiB bodies ({make_body.__name__}): {peak:.1f} MiB")
    assert peak < 150


# -- 4. headers ------------------------------------------------------------------------------


def test_a_request_line_over_8_kib_is_414(server: Server) -> None:
    response, _ = server.raw(b"POST /postbacks/passes?pad=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(response) == 414 and error_of(response) == "uri_too_long"


def test_headers_over_16_kib_are_431_before_credentials(server: Server) -> None:
    response, _ = server.raw(b"POST /postbacks/passes HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1024 * 1024) + b"\r\n\r\n")
    assert status_of(response) == 431 and error_of(response) == "headers_too_large"


def test_more_than_100_headers_is_431(server: Server) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(10_000))
    response, _ = server.raw(b"POST /postbacks/passes HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert status_of(response) == 431 and error_of(response) == "too_many_headers"


def test_a_huge_pending_header_is_not_buffered(server: Server) -> None:
    before = server.rss_mib()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /postbacks/passes HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = 0
        with pytest.raises(OSError):  # refused and closed long before 64 MiB
            for _ in range(64 * 16):
                sock.sendall(b"a" * 65536)
                sent += 65536
        response, _ = read_until_closed(sock, 5)
    assert sent < 4 * 1024 * 1024
    assert response == b"" or status_of(response) == 431
    assert server.rss_mib() - before < 10


# -- 5. slow clients -------------------------------------------------------------------------


def crawl(server: Server, start: bytes, then: bytes, every: float) -> tuple[bytes, float]:
    """Send ``start``, then ``then`` every ``every`` seconds until the server closes the
    connection (it must, within 15 s); return its answer and how long it took."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        started = time.monotonic()
        sock.sendall(start)
        with pytest.raises(OSError):
            for _ in range(int(15 / every)):
                time.sleep(every)
                sock.sendall(then)
        response, _ = read_until_closed(sock, 5)
        return response, time.monotonic() - started


def test_headers_sent_at_a_crawl_are_cut_off_with_408(server: Server) -> None:
    response, elapsed = crawl(server, b"POST /postbacks/passes HTTP/1.1\r\n", b"X-Slow: 1\r\n", 0.3)
    assert status_of(response) == 408 and error_of(response) == "header_timeout"
    assert HEADER_TIMEOUT <= elapsed < HEADER_TIMEOUT + 2


def test_a_connection_that_sends_nothing_is_closed(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        response, elapsed = read_until_closed(sock, 10)
    assert status_of(response) == 408 and elapsed < HEADER_TIMEOUT + 2


def test_many_slow_connections_are_all_closed(server: Server) -> None:
    sockets = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(30)]
    try:
        for sock in sockets:
            sock.sendall(b"POST /postbacks/passes HTTP/1.1\r\nX-Slow: ")
        time.sleep(HEADER_TIMEOUT + 1.5)
        for sock in sockets:
            response, elapsed = read_until_closed(sock, 1)
            assert status_of(response) == 408 and elapsed < 1
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.parametrize("head, first_part", [
    (b"Transfer-Encoding: chunked", b"FFFFFFFF\r\n<POSTBACK>"),  # claims 4 GiB, sends 10 bytes, stops
    (b"Content-Length: 500", b"<POSTBACK>"),  # 1 byte/s, never complete in time
], ids=["lying-chunk", "slow-body"])
def test_a_body_that_does_not_arrive_in_time_is_408(server: Server, head: bytes, first_part: bytes) -> None:
    response, elapsed = crawl(server, b"POST /postbacks/passes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                              TOKEN.encode() + b"\r\n" + head + b"\r\n\r\n" + first_part, b"x", 0.5)
    assert status_of(response) == 408 and error_of(response) == "body_timeout"
    assert BODY_TIMEOUT <= elapsed < BODY_TIMEOUT + 2


def test_a_body_cut_short_then_closed_writes_nothing(server: Server) -> None:
    body = postback("cut-short")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /postbacks/passes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() +
                     b"\r\nContent-Length: %d\r\n\r\n" % (len(body) + 100) + body)
    assert server.post(postback("after-cut")).status_code == 200
    assert events_keyed(server, b"cut-short") == 0


def test_a_chunk_longer_than_its_size_is_400(server: Server) -> None:
    response, _ = server.raw(b"POST /postbacks/passes HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                             b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n5\r\n<POSTBACK>\r\n0\r\n\r\n")
    assert status_of(response) == 400 and error_of(response) == "bad_request"


def test_a_refused_request_body_is_not_read_at_the_clients_pace(server: Server) -> None:
    # 401 before the body is read: the connection closes instead of waiting for the rest.
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /postbacks/passes HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n<POSTBACK>")
        response, elapsed = read_until_closed(sock, 5)
    assert status_of(response) == 401 and elapsed < 1


def test_connections_above_the_cap_get_503(server: Server) -> None:
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)
        response, elapsed = server.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", read_timeout=5)
        assert status_of(response) == 503 and error_of(response) == "too_many_connections" and elapsed < 1
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    first, second = postback("pipe-1"), postback("pipe-2", status="N802")
    request = b"".join(b"POST /postbacks/passes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode() +
                       b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body for body in (first, second))
    request += b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    response, _ = server.raw(request)
    assert [int(part[:3]) for part in response.split(b"HTTP/1.1 ")[1:]] == [200, 200, 200]
    assert events_keyed(server, b"pipe-1") == 1 and events_keyed(server, b"pipe-2") == 1


def test_http_1_0_is_answered_and_closed(server: Server) -> None:
    body = VENDOR_EXAMPLE
    response, elapsed = server.raw(b"POST /postbacks/passes HTTP/1.0\r\nAuthorization: Bearer " + TOKEN.encode() +
                                   b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert status_of(response) == 200 and elapsed < 5


def test_refusals_are_counted_and_logged_with_their_code(server: Server) -> None:
    server.raw(b"GET /healthz?" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n")
    metrics = httpx.get(server.url + "/metrics").text
    assert 'passpost_http_refusals_total{reason="uri_too_long"}' in metrics
    deadline = time.monotonic() + 5  # info lines are written in batches, at most 0.1 s apart (passpost/logs.py)
    while '"error": "uri_too_long"' not in server.log() and "error=uri_too_long" not in server.log():
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.05)


def test_expect_100_continue_is_answered_before_the_body_is_sent(server: Server) -> None:
    body = postback("continue-1")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /postbacks/passes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                     + b"\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        sock.settimeout(10)
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        response, _ = read_until_closed_or_answered(sock)
    assert status_of(response) == 200, response


def test_a_head_request_gets_its_head_alone(server: Server) -> None:
    response, _ = server.raw(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 ") and response.endswith(b"\r\n\r\n"), response


def read_until_closed_or_answered(sock: socket.socket) -> tuple[bytes, float]:
    received = b""
    started = time.monotonic()
    while b"\r\n\r\n" not in received or len(received.split(b"\r\n\r\n", 1)[1]) < _content_length(received):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received, time.monotonic() - started


def _content_length(response: bytes) -> int:
    for line in response.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0
