"""Counters, figures, the observer hook and the registry of live pools.

Counters keep psycopg_pool's key names; ``Figures`` are the gauges metrics read; an
``Observer`` (none by default, so metrics cost nothing when off) hears durations as they
happen; ``live_runners()`` lists every open pool of either runner kind, weakly held.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Protocol

__all__ = [
    "COUNTER_KEYS",
    "GAUGE_KEYS",
    "Counters",
    "Figures",
    "Observer",
    "live_runners",
    "observers_enabled",
    "register",
    "set_observer_factory",
    "unregister",
]

#: Keys that describe the pool right now; ``pop_stats()`` does not reset them.
GAUGE_KEYS = ("pool_min", "pool_max", "pool_size", "pool_available", "requests_waiting")

#: Keys that count events since the pool was made or since the last ``pop_stats()``.
COUNTER_KEYS = (
    "requests_num",
    "requests_queued",
    "requests_wait_ms",
    "requests_errors",
    "connections_num",
    "connections_ms",
    "connections_errors",
    "connections_lost",
    "returns_bad",
    "usage_ms",
)


class Counters:
    """Event counters of one pool; the runner updates them under its own lock."""

    __slots__ = COUNTER_KEYS

    def __init__(self) -> None:
        self.requests_num = 0  # checkouts asked for
        self.requests_queued = 0  # checkouts that had to wait
        self.requests_wait_ms = 0.0  # total time spent waiting
        self.requests_errors = 0  # checkouts that failed: timeout, closed pool, connect error
        self.connections_num = 0  # connections opened
        self.connections_ms = 0.0  # total time spent opening them
        self.connections_errors = 0  # failed connection attempts
        self.connections_lost = 0  # connections a check found dead
        self.returns_bad = 0  # returned connections that could not be kept
        self.usage_ms = 0.0  # total time connections spent checked out

    def snapshot(self) -> Dict[str, int]:
        """The counters as a dict, milliseconds rounded to whole numbers."""
        return {key: int(getattr(self, key)) for key in COUNTER_KEYS}

    def pop(self) -> Dict[str, int]:
        """The counters as a dict, then zero them."""
        counters = self.snapshot()
        self.__init__()  # type: ignore[misc]
        return counters


@dataclass(frozen=True)
class Figures:
    """A pool's gauges at one instant (what metrics export)."""

    name: str
    kind: str  # the face's class name
    idle: int
    used: int  # borrowed
    opening: int  # being opened, reset or checked
    size: int  # idle + used + opening
    max: int  # most connections the pool may hold
    idle_max: int  # idle connections kept on return
    idle_min: int  # connections kept open (min_size)
    pending: int  # callers waiting
    timeouts: int  # acquires that ran out of time, since the pool was made (never popped)


class Observer(Protocol):
    """Hears durations in seconds as they happen; assign one to ``runner.observer``."""

    def created(self, pool_name: str, seconds: float) -> None:
        """A connection was opened (connect and prepare) in ``seconds``."""

    def waited(self, pool_name: str, seconds: float) -> None:
        """An acquire that had to queue waited ``seconds`` (served or not)."""

    def used(self, pool_name: str, seconds: float) -> None:
        """A connection was borrowed for ``seconds``."""


_live: weakref.WeakSet[Any] = weakref.WeakSet()
_registry_lock = threading.Lock()
#: Gives each registered pool its observer while metrics are on (pgpool_compat.metrics).
_observer_factory: Optional[Callable[[Any], Observer]] = None


def register(runner: Any) -> None:
    """Track a runner (threaded or asyncio) until it is closed or collected; it gets an
    observer at once while metrics are on."""
    with _registry_lock:
        _live.add(runner)
        factory = _observer_factory
    if factory is not None:
        runner.observer = factory(runner)


def set_observer_factory(factory: Optional[Callable[[Any], Observer]]) -> None:
    """Give every live pool, and each one registered later, ``factory(pool)`` as its
    ``observer``; ``None`` takes the observers away (metrics off: zero cost)."""
    global _observer_factory
    with _registry_lock:
        _observer_factory = factory
        pools = list(_live)
    for pool in pools:
        pool.observer = None if factory is None else factory(pool)


def observers_enabled() -> bool:
    return _observer_factory is not None


def unregister(runner: Any) -> None:
    _live.discard(runner)


def live_runners() -> List[Any]:
    """Every open runner, of both kinds; each has ``name``, ``figures()`` and ``stats()``."""
    return [runner for runner in list(_live) if not runner.closed]
