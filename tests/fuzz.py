"""A seeded mutation fuzzer for the live ingress: every answer definite, every count exact.

    python -m tests.fuzz --inputs 1000000 [--seed 7] [--concurrency 16]

starts a local Kafka and `passpost serve` (or uses ``--url`` with ``--bootstrap`` and
the server's topics), posts ``--inputs`` mutated bodies and checks what CI checks in
``tests/test_fuzz.py``:

* no 5xx other than 503, no answer slower than ``SLOW_SECONDS``, no traceback in the log;
* the items of the requests answered 200 equal the events on the topic, and the
  requests answered with a dead-lettering refusal (400, 422, 413 ``event_too_large``)
  equal the records on the dead-letter topic.

The inputs start from the vendor's example and a three-item bundle and are mutated the
way real damage looks: bytes flipped, ranges cut, copied or repeated, XML fragments
spliced in (DOCTYPEs, CDATA, entities, deep nesting, bad timestamps), form encoding,
odd content types and query strings. The same seed makes the same inputs.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote_from_bytes

import httpx

ROOT = Path(__file__).resolve().parent.parent
VENDOR_EXAMPLE = (ROOT / "tests" / "data" / "vendor_example.xml").read_bytes()
BUNDLE = (b"<POSTBACKS><POSTBACK><ORIGIN>GENERATE_PASS</ORIGIN><TIMESTAMP>2026-11-26T11:37:11-05:00</TIMESTAMP>"
          b"<NOTIFICATION><STATUSCODE>N801</STATUSCODE><SERIALNUMBER>S-1</SERIALNUMBER></NOTIFICATION>"
          b"<NOTIFICATION><STATUSCODE>N811</STATUSCODE><SERIALNUMBER>S-2</SERIALNUMBER>"
          b"<PASSDATA><BARCODEVALUE>123</BARCODEVALUE></PASSDATA></NOTIFICATION></POSTBACK>"
          b"<POSTBACK><ORIGIN>GENERATE_PASS</ORIGIN><CODE>E100</CODE><REFERENCEVALUE>a@b.c</REFERENCEVALUE>"
          b"</POSTBACK></POSTBACKS>")
SEEDS = (VENDOR_EXAMPLE, BUNDLE)

SLOW_SECONDS = 5.0
# Refusals whose body goes to the dead-letter topic (the README's table of answers); 413 body_too_large does not.
DEAD_LETTERED = {400, 422}
DEAD_LETTERED_413 = {"event_too_large", "too_many_items"}

FRAGMENTS = (
    b"<POSTBACK>", b"</POSTBACK>", b"<NOTIFICATION>", b"</NOTIFICATION>", b"<ORIGIN></ORIGIN>",
    b"<STATUSCODE>N802</STATUSCODE>", b"<CODE>E1</CODE>", b"<TIMESTAMP>yesterday</TIMESTAMP>",
    b"<TIMESTAMP>9999-99-99T99:99:99+99:99</TIMESTAMP>", b"<TIMESTAMP>2013-11-26T11:37:11</TIMESTAMP>",
    b'<!DOCTYPE p [<!ENTITY x "xx">]>', b'<!DOCTYPE p SYSTEM "http://127.0.0.1:1/x">', b"&x;", b"&#0;", b"&#x110000;",
    b"&amp;", b"<![CDATA[<POSTBACK>]]>", b"<!-- c -->", b"<?pi x?>", b"<a:b xmlns:a='u'>v</a:b>",
    b"<x y='1' y='2'/>", b"\x00", b"\xff\xfe", b"\xef\xbb\xbf", b"\xc3\x28", b"\xed\xa0\x80", b"\r\n", b"\t",
    b"<?xml version='1.0' encoding='UTF-16'?>", b"<?xml version='1.0' encoding='nope'?>",
    b"<PASSDATA><BARCODEVALUE>1</BARCODEVALUE><BARCODEVALUE>2</BARCODEVALUE></PASSDATA>",
    b"<" * 3, b">" * 3, b"xsi:no\nNamespaceSchemaLocation='x'",
)
CONTENT_TYPES = ("application/xml", "text/xml; charset=utf-8", "", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=x", "application/json", "text/xml; charset=\u00ff")


@dataclass(frozen=True)
class Case:
    body: bytes
    content_type: str
    query: str


def mutate(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(rng.choice((1, 1, 2, 3, 5))):
        kind = rng.randrange(9)
        at = rng.randrange(len(data) + 1)
        end = min(len(data), at + rng.randrange(1, 64))
        if kind == 0 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif kind == 1:
            del data[at:end]
        elif kind == 2:
            data[at:at] = data[at:end] * rng.randrange(1, 20)
        elif kind == 3:
            data[at:at] = rng.choice(FRAGMENTS)
        elif kind == 4:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        elif kind == 5:
            depth = rng.randrange(1, 300)
            data[at:at] = b"<n>" * depth + b"v" + b"</n>" * depth
        elif kind == 6:
            del data[at:]
        elif kind == 7:
            data = bytearray(data.replace(b"N801", rng.choice((b"N802", b"N803", b"N811", b"E42", b"", b"Z"))))
        else:
            data[at:at] = b"<NOTIFICATION><STATUSCODE>N801</STATUSCODE></NOTIFICATION>" * rng.randrange(1, 40)
    return bytes(data)


def cases(seed: int) -> object:
    """An endless, reproducible stream of ``Case``s."""
    rng = random.Random(seed)
    while True:
        body = rng.choice(SEEDS)
        if rng.random() < 0.9:
            body = mutate(rng, body)
        content_type = rng.choice(CONTENT_TYPES)
        if content_type == "application/x-www-form-urlencoded" or rng.random() < 0.05:
            body = b"other=1&xml=" + quote_from_bytes(body).encode()
        query = rng.choice(("", "", "", "&x=%ff", "&token=%E2%82%AC", "&token", "&%00=1"))
        yield Case(body, content_type, query)


@dataclass
class Tally:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    events_answered: int = 0
    dead_lettered: int = 0
    unavailable_items: int = 0
    slowest: float = 0.0
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        codes = ", ".join(f"{code} {count}" for code, count in sorted(self.statuses.items()))
        return (f"{self.requests} inputs: {codes}; events answered {self.events_answered}, dead-lettered "
                f"{self.dead_lettered}; slowest answer {self.slowest:.2f} s")


async def run(url: str, token: str, inputs: int, seed: int, concurrency: int, tally: Tally) -> None:
    stream = iter(cases(seed))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=SLOW_SECONDS * 4) as client:
        async def worker() -> None:
            while tally.requests < inputs:
                tally.requests += 1
                case = next(stream)
                headers = {"Authorization": f"Bearer {token}"}
                if case.content_type:
                    headers["Content-Type"] = case.content_type.encode("latin-1")  # type: ignore[assignment]
                started = time.monotonic()
                try:
                    response = await client.post(f"{url}/postbacks/passes?src=fuzz{case.query}", content=case.body,
                                                 headers=headers)
                except httpx.HTTPError as error:
                    tally.failures.append(f"no answer ({type(error).__name__}) to {case.body[:200]!r}")
                    continue
                elapsed = time.monotonic() - started
                tally.slowest = max(tally.slowest, elapsed)
                judge(tally, case, response, elapsed)

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def judge(tally: Tally, case: Case, response: httpx.Response, elapsed: float) -> None:
    status = response.status_code
    tally.statuses[status] += 1
    if elapsed > SLOW_SECONDS:
        tally.failures.append(f"{elapsed:.1f} s for {case.body[:200]!r}")
    if status >= 500 and status != 503:
        tally.failures.append(f"{status} for {case.body[:200]!r}: {response.text[:200]}")
        return
    try:
        answer = response.json()
    except ValueError:
        tally.failures.append(f"{status} without a JSON body for {case.body[:200]!r}")
        return
    if status == 200:
        tally.events_answered += answer["events"]
        return
    code = answer.get("error")
    tally.errors[code] += 1
    if status in DEAD_LETTERED or (status == 413 and code in DEAD_LETTERED_413):
        tally.dead_lettered += 1


def check_topics(tally: Tally, bootstrap: str, events_topic: str, dead_topic: str, log_text: str) -> list[str]:
    """What must hold after a run; returns the failures (empty when all is well)."""
    from tests.kafka_helpers import read_all

    failures = list(tally.failures)
    events = len(read_all(bootstrap, events_topic, timeout=30))
    dead = len(read_all(bootstrap, dead_topic, timeout=30))
    if tally.statuses[503] == 0:
        if events != tally.events_answered:
            failures.append(f"{events} events on the topic, {tally.events_answered} answered 200")
        if dead != tally.dead_lettered:
            failures.append(f"{dead} dead letters on the topic, {tally.dead_lettered} answers that dead-letter")
    elif events < tally.events_answered or dead < tally.dead_lettered:
        failures.append(f"fewer records than answers: events {events}/{tally.events_answered}, "
                        f"dead letters {dead}/{tally.dead_lettered}")
    if "Traceback" in log_text:
        start = log_text.index("Traceback")
        failures.append("traceback in the server log:\n" + log_text[start:start + 3000])
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    options = parser.parse_args()

    import tempfile

    from passpost_dev.kafka import LocalKafka
    from tests.kafka_helpers import create_topics, unique_topic
    from tests.live import live_ingress

    with tempfile.TemporaryDirectory(prefix="passpost-fuzz-") as scratch, LocalKafka(Path(scratch) / "kafka") as kafka:
        events, dead = unique_topic("fuzz-events"), unique_topic("fuzz-dlq")
        create_topics(kafka.bootstrap_servers, [events, dead])
        token = "fuzz-token"
        env = {"PASSPOST_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "PASSPOST_INGEST_TOKENS": token,
               "PASSPOST_EVENTS_TOPIC": events, "PASSPOST_DEAD_LETTER_TOPIC": dead, "PASSPOST_LOG_LEVEL": "warning"}
        log = Path(scratch) / "serve.log"
        tally = Tally()
        started = time.monotonic()
        with live_ingress(env, log) as ingress:
            asyncio.run(run(ingress.url, token, options.inputs, options.seed, options.concurrency, tally))
        elapsed = time.monotonic() - started
        failures = check_topics(tally, kafka.bootstrap_servers, events, dead, log.read_text(errors="replace"))
    print(f"{tally.summary()}; {tally.requests / elapsed:.0f} inputs/s over {elapsed:.0f} s")
    print("refusals: " + ", ".join(f"{code} {count}" for code, count in tally.errors.most_common()))
    for failure in failures[:20]:
        print("FAIL", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
