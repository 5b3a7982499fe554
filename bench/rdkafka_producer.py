"""librdkafka (confluent-kafka) for the event loop, its delivery reports handed over in batches.

``confluent_kafka.Producer`` reports each record's outcome through a callback run inside
``poll()``. One asyncio future per record resolved by its own thread-safe wake-up cost an
earlier attempt 32-46 µs a record (issue 22); here the reports of one ``poll`` reach the
loop together:

* ``mode="thread"``: a poll thread collects the reports of each ``poll`` and hands them
  to the loop with one ``call_soon_threadsafe`` per batch;
* ``mode="tick"``: the loop itself calls ``poll(0)`` every ``tick`` seconds while records
  are outstanding (none when idle), so reports never cross threads.

``produce`` returns the record's future: its result is ``None`` once Kafka confirmed the
record, or it fails with ``RdKafkaError`` (whose ``error`` is librdkafka's ``KafkaError``).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from confluent_kafka import KafkaError, Producer


class RdKafkaError(Exception):
    def __init__(self, error: KafkaError) -> None:
        super().__init__(error.str())
        self.error = error


def _settle(reports: list[tuple[asyncio.Future[None], Any]]) -> None:
    for future, error in reports:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(RdKafkaError(error))


class _Report:
    """The delivery callback of one record (a bound method is cheaper than a closure)."""

    __slots__ = ("future", "reports")

    def __init__(self, future: asyncio.Future[None], reports: list[tuple[asyncio.Future[None], Any]]) -> None:
        self.future = future
        self.reports = reports

    def __call__(self, error: Any, message: Any) -> None:
        self.reports.append((self.future, error))


class BatchedProducer:
    def __init__(self, config: dict[str, Any], loop: asyncio.AbstractEventLoop, *, mode: str = "tick",
                 tick: float = 0.0005) -> None:
        self._producer = Producer(config)
        self._loop = loop
        self._mode = mode
        self._tick = tick
        self._reports: list[tuple[asyncio.Future[None], Any]] = []
        self._outstanding = 0
        self._ticking = False
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        if mode == "thread":
            self._thread = threading.Thread(target=self._poll_thread, name="rdkafka-poll", daemon=True)
            self._thread.start()

    # -- the loop's side -------------------------------------------------------------------

    def produce(self, topic: str, value: bytes, key: bytes | None,
                headers: list[tuple[str, str | bytes | None]] | None = None) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self._loop.create_future()
        self._producer.produce(topic, value, key, headers=headers, on_delivery=_Report(future, self._reports))
        if self._mode == "tick":
            self._outstanding += 1
            if not self._ticking:
                self._ticking = True
                self._loop.call_later(self._tick, self._on_tick)
        return future

    def _on_tick(self) -> None:
        self._producer.poll(0)
        reports = self._reports
        if reports:
            batch = reports[:]
            reports.clear()  # the same list: every record's callback holds it
            self._outstanding -= len(batch)
            _settle(batch)
        if self._outstanding > 0 and not self._closed.is_set():
            self._loop.call_later(self._tick, self._on_tick)
        else:
            self._ticking = False

    # -- the poll thread's side ------------------------------------------------------------

    def _poll_thread(self) -> None:
        producer, loop = self._producer, self._loop
        while not self._closed.is_set():
            producer.poll(0.05)
            reports = self._reports
            if reports:
                batch = reports[:]  # only this thread's polls append to it
                del reports[:len(batch)]
                loop.call_soon_threadsafe(_settle, batch)

    async def close(self, timeout: float) -> int:
        """Flush up to ``timeout`` seconds; the number of records still unconfirmed."""
        left: int = await asyncio.get_running_loop().run_in_executor(None, self._producer.flush, timeout)
        self._closed.set()
        if self._thread is not None:
            self._thread.join()
        else:
            self._producer.poll(0)
        _settle(self._reports)
        return left
