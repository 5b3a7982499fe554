"""Kafka reachability as a person reads it during a fault: one line when a broker or a group
coordinator is lost, one when it is back (with how long it was away), and aiokafka's
per-attempt lines at DEBUG.

aiokafka logs every failed connection attempt, every metadata retry and every coordinator it
drops, at WARNING or ERROR, so a broker's death of ten seconds makes hundreds of lines from the
ingress and the consumers alike. ``REACHABILITY`` is one process-wide tracker:

- ``watch(client)`` (called by ``passpost.kafka.start_client`` for every client) wraps the
  client's connection look-up, so each attempt to reach node N tells the tracker whether it
  succeeded: the first failure logs "Kafka broker N at host:port unreachable", the first
  success after logs "Kafka broker N at host:port reachable again after X s".
- as a ``logging.Filter`` on every aiokafka logger (``install()``, from ``passpost.logs.configure``)
  it turns the per-attempt lines to DEBUG and learns the group coordinator's loss ("Marking the
  coordinator dead") and rediscovery ("Discovered coordinator") from them.

Lines that matter stay as they are: a produce error, a session expired, a fatal join error.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("passpost.kafka")

# aiokafka's lines that repeat once per attempt while a broker or a coordinator is away; the
# tracker says the same once. Matched on the message's format string.
PER_ATTEMPT = (
    "Unable connect to node with id",
    "Unable connect to \"",
    "Unable to request metadata from",
    "Unable to update metadata from",
    "Marking the coordinator dead",
    "Heartbeat send request failed",
    "Heartbeat failed for group %s: coordinator",
    "Group Coordinator Request failed",
    "Failed fetch messages from",
    "Failed fetch offsets from",
    "Cannot send %r to %s",
    "Could not send %r",
    "FindCoordinator Request failed",
    "Coordinator lookup failed",
)
# Shown in a message's arguments when a request found its node not ready (a per-attempt error).
PER_ATTEMPT_ERRORS = ("NodeNotReadyError", "CoordinatorNotAvailable", "KafkaConnectionError", "RequestTimedOutError")


class _Starting:
    """One ``start_client`` call in progress; tasks the start spawns share it, so their lines are
    quiet while it runs and shown again once it returns."""

    active = True


_starting: contextvars.ContextVar[_Starting | None] = contextvars.ContextVar("passpost_kafka_starting", default=None)


@dataclass
class _Lost:
    since: float
    node_id: int
    announced: bool = False


# How often a broker this process cannot reach is tried again, whether or not a client needs it.
PROBE_SECONDS = 5.0
# A group without a coordinator for less than this is routine: a group's first start marks
# its coordinator dead several times while the broker loads the offsets topic.
COORDINATOR_GRACE_SECONDS = 2.0


@dataclass
class _Away:
    since: float
    address: str


class KafkaReachability(logging.Filter):
    """Which brokers and group coordinators this process cannot reach, and since when."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, probe_seconds: float = PROBE_SECONDS) -> None:
        super().__init__()
        self._clock = clock
        self._probe_seconds = probe_seconds
        self._lock = threading.Lock()
        self._brokers: dict[int, _Away] = {}  # node id -> since when unreachable
        self._coordinators: dict[str, _Lost] = {}  # group -> since when without its coordinator
        self._last_error: dict[int, str] = {}
        self._known: dict[int, str] = {}  # node id -> address, every node this process reached or tried
        # Each metrics registry's (node, address, reachable) method, weakly: tests build many apps.
        self._listeners: list[weakref.WeakMethod[Callable[[int, str, bool], None]]] = []
        self._last_probe = 0.0
        self._probes: set[asyncio.Future[Any]] = set()

    # --- brokers -------------------------------------------------------------------------

    def broker_failed(self, node_id: int, address: str, reason: str | None = None) -> None:
        with self._lock:
            self._known[node_id] = address
            if node_id in self._brokers:
                return
            self._brokers[node_id] = _Away(self._clock(), address)
        why = reason or self._last_error.get(node_id) or "no connection"
        log.warning("Kafka broker %s at %s unreachable (%s); retrying", node_id, address, why)
        self._notify(node_id, address, False)

    def broker_reached(self, node_id: int, address: str) -> None:
        if node_id in self._known and node_id not in self._brokers:  # the common case, no lock
            return
        with self._lock:
            first = node_id not in self._known
            self._known[node_id] = address
            away = self._brokers.pop(node_id, None)
        if away is None:
            if first:
                self._notify(node_id, address, True)
            return
        log.warning("Kafka broker %s at %s reachable again after %.1f s", node_id, address,
                    self._clock() - away.since)
        self._notify(node_id, address, True)

    def unreachable_brokers(self) -> dict[int, str]:
        with self._lock:
            return {node: away.address for node, away in self._brokers.items()}

    # --- coordinators --------------------------------------------------------------------

    def coordinator_lost(self, group: str, node_id: int) -> None:
        with self._lock:
            self._coordinators.setdefault(group, _Lost(self._clock(), node_id))

    def coordinator_found(self, group: str, node_id: int) -> None:
        with self._lock:
            lost = self._coordinators.pop(group, None)
        if lost is None or not lost.announced:
            return
        moved = "" if lost.node_id == node_id else f", moved from broker {lost.node_id}"
        log.warning("group coordinator of %s is broker %s again after %.1f s%s", group, node_id,
                    self._clock() - lost.since, moved)

    def _announce_lost_coordinators(self) -> None:
        """Say once that a group has been without its coordinator for longer than the grace;
        aiokafka retries (and logs) all along, so the filter calls this often enough."""
        now = self._clock()
        with self._lock:
            due = [(group, lost) for group, lost in self._coordinators.items()
                   if not lost.announced and now - lost.since >= COORDINATOR_GRACE_SECONDS]
            for _, lost in due:
                lost.announced = True
        for group, lost in due:
            log.warning("group coordinator of %s (broker %s) lost %.1f s ago; looking for it again",
                        group, lost.node_id, now - lost.since)

    # --- the filter on aiokafka's loggers ------------------------------------------------

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """Leave out aiokafka's lines for a client being started in this context (``start_client``
        says why a start failed, once); no logger's level changes, so overlapping starts cannot
        leave one behind."""
        starting = _Starting()
        token = _starting.set(starting)
        try:
            yield
        finally:
            starting.active = False
            _starting.reset(token)

    def filter(self, record: logging.LogRecord) -> bool:
        starting = _starting.get()
        if starting is not None and starting.active:
            return False
        if self._coordinators:
            self._announce_lost_coordinators()
        template = str(record.msg)
        args = record.args if isinstance(record.args, tuple) else ()
        if template.startswith("Unable connect to node with id") and len(args) >= 2:
            self._last_error[_int(args[0])] = _short(args[1])
        elif template.startswith("Marking the coordinator dead") and len(args) >= 2:
            self.coordinator_lost(str(args[1]), _int(args[0]))
        elif template.startswith("Discovered coordinator") and len(args) >= 2:
            self.coordinator_found(str(args[1]), _int(args[0]))
            return _shown_below_warning(record)
        if record.levelno < logging.WARNING:
            return _shown_below_warning(record)
        if template.startswith(PER_ATTEMPT) or any(name in record.getMessage() for name in PER_ATTEMPT_ERRORS):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.exc_info, record.exc_text = None, None
            return _shown_below_warning(record)
        return True

    def watch(self, client: Any) -> None:
        """Report each connection attempt of an aiokafka client (a producer, consumer or admin
        client, or its inner ``AIOKafkaClient``) to this tracker; watching twice is a no-op."""
        # A consumer's or admin client's AIOKafkaClient is ``_client``, a producer's ``client``.
        inner = getattr(client, "_client", None) or getattr(client, "client", None) or client
        get_conn = getattr(inner, "_get_conn", None)
        if get_conn is None or getattr(get_conn, "_passpost_watched", False):
            return

        idle_prober: asyncio.Task[None] | None = None

        async def report(node_id: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal idle_prober
            connection = await get_conn(node_id, *args, **kwargs)
            if connection is not None and node_id in self._known and node_id not in self._brokers:
                return connection  # the hot path (every produce asks for its leader): nothing changed
            if isinstance(node_id, int) and node_id >= 0:
                broker = inner.cluster.broker_metadata(node_id)
                address = f"{broker.host}:{broker.port}" if broker is not None else self._known.get(node_id, "?")
                if connection is None:
                    self.broker_failed(node_id, address)
                    if idle_prober is None or idle_prober.done():
                        idle_prober = asyncio.ensure_future(keep_probing())
                        self._probes.add(idle_prober)
                        idle_prober.add_done_callback(self._probes.discard)
                else:
                    self.broker_reached(node_id, address)
            return connection

        async def keep_probing() -> None:
            # A client that asks for no connection (an idle ingress) would leave a broker that
            # came back "unreachable", its gauge 0 and its alert firing, until its next metadata
            # refresh minutes later. Stops once every broker is reached or the client is closed
            # (aiokafka's metadata task is gone).
            while self._brokers and getattr(inner, "_sync_task", None) is not None:
                await asyncio.sleep(self._probe_seconds)
                self._probe_unreachable(report, None)

        async def watched_get_conn(node_id: Any, *args: Any, **kwargs: Any) -> Any:
            if self._brokers:
                self._probe_unreachable(report, node_id)
            return await report(node_id, *args, **kwargs)

        watched_get_conn._passpost_watched = True  # type: ignore[attr-defined]
        inner._get_conn = watched_get_conn

    def _probe_unreachable(self, report: Callable[..., Any], asked: object) -> None:
        """Try an unreachable broker again every ``PROBE_SECONDS``: a client asks for a node only
        while it needs it (a leader, a coordinator), so one restarted after its partitions moved
        away would otherwise stay "unreachable" (and its gauge 0) for good."""
        now = self._clock()
        if now - self._last_probe < self._probe_seconds:
            return
        self._last_probe = now
        for node_id in list(self._brokers):
            if node_id != asked:
                task = asyncio.ensure_future(report(node_id))
                self._probes.add(task)
                task.add_done_callback(self._probes.discard)

    def subscribe(self, listener: Callable[[int, str, bool], None]) -> None:
        """Call the bound method ``listener(node, address, reachable)`` for every broker known now,
        then when one is first reached, lost or back (a metrics gauge); held weakly."""
        with self._lock:
            known = [(node, address, node not in self._brokers) for node, address in self._known.items()]
        for node, address, reachable in known:
            listener(node, address, reachable)
        self._listeners.append(weakref.WeakMethod(listener))

    def _notify(self, node_id: int, address: str, reachable: bool) -> None:
        for reference in list(self._listeners):
            listener = reference()
            if listener is None:
                self._listeners.remove(reference)
            else:
                listener(node_id, address, reachable)


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError):
        return -1


def _short(error: object) -> str:
    text = str(error)
    return text if len(text) <= 200 else text[:197] + "..."


def _shown_below_warning(record: logging.LogRecord) -> bool:
    # aiokafka's own level is capped at WARNING (logs.configure): its lower lines (and the
    # per-attempt ones, now DEBUG) show only to whoever lowers the "aiokafka" logger's level.
    return logging.getLogger("aiokafka").isEnabledFor(record.levelno)


REACHABILITY = KafkaReachability()


def install() -> None:
    """Put ``REACHABILITY`` on every aiokafka logger (a filter applies to its own logger's
    records only, not its children's), and let the coordinator's INFO lines reach it."""
    import aiokafka  # noqa: F401  (its modules create their loggers on import)

    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and (name == "aiokafka" or name.startswith("aiokafka.")):
            if REACHABILITY not in logger.filters:
                logger.addFilter(REACHABILITY)
    # "Discovered coordinator" is INFO, which the tracker must see; the filter still shows it
    # only as far as the "aiokafka" logger's level allows.
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    coordinator.setLevel(min(logging.INFO, logging.getLogger("aiokafka").getEffectiveLevel()))
