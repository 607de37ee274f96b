"""Pool counters, reported with psycopg_pool's key names where the meaning is the same."""

from __future__ import annotations

from typing import Dict

__all__ = ["COUNTER_KEYS", "GAUGE_KEYS", "PoolStats"]

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


class PoolStats:
    """Event counters of one pool; the owner updates them under its own lock."""

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
