"""Pure rules shared by every pool kind, beside the per-connection ``records.ConnRecord``.

Nothing here does I/O, takes a lock or knows about threads or asyncio: the sync engine and
the async pool each call these helpers under their own concurrency scheme, so idle expiry,
messages, settings validation and stats come out the same everywhere. Lifetimes with jitter
live in ``records`` (``ConnRecord.expired``), which both pools use.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

from .records import ConnRecord
from .stats import PoolStats

__all__ = [
    "CLOSED_MESSAGE",
    "DUPLICATE_MESSAGE",
    "FOREIGN_RELEASE_MESSAGE",
    "MAX_SECONDS",
    "callable_setting",
    "count_setting",
    "default_releaser",
    "exhausted_message",
    "flag_setting",
    "idle_too_long",
    "pool_stats",
    "prefill_count",
    "seconds_setting",
    "size_settings",
    "timeout_limits",
]

#: psycopg2.pool's own wording: application code tests ``"closed" in str(error)``.
CLOSED_MESSAGE = "connection pool is closed"

#: A connect that returned no new object (``%s``: what it returned instead). Refused, so
#: that one object never goes to two borrowers; the slot is freed.
DUPLICATE_MESSAGE = (
    "the connection factory returned %s; each connect must return a new connection "
    "(nothing was handed out and the slot is free again)"
)

#: ``release()`` of a connection the pool did not hand out (or already took back): the
#: factory pools' wording, sync and async alike.
FOREIGN_RELEASE_MESSAGE = "trying to release a connection this pool did not hand out"

#: Longest accepted duration: one year. Longer is a typo, and overflows lock timeouts.
MAX_SECONDS = 365 * 24 * 3600.0


def idle_too_long(
    record: ConnRecord, now: float, max_idle: Optional[float], open_count: int, min_size: int
) -> bool:
    """Whether an idle connection should be closed for idleness.

    Only with ``max_idle`` set, and never when closing it would leave fewer than
    ``min_size`` connections open (``open_count`` counts this one).
    """
    return max_idle is not None and now - record.idle_since > max_idle and open_count > min_size


def timeout_limits(timeout: Optional[float], max_size: int) -> str:
    """The factory pools' ``limits`` for ``exhausted_message``, in their own keywords."""
    shown = "None" if timeout is None else f"{timeout:g}"
    return f"timeout={shown}, max_size={max_size}"


def exhausted_message(waited: float, limits: str, others_waiting: int) -> str:
    """The timeout message of every pool kind.

    It starts with psycopg2.pool's ``connection pool exhausted`` so ``"exhausted" in``
    tests keep working; ``limits`` names the settings, e.g. ``"timeout=2, max_size=5"``;
    ``others_waiting`` counts the callers still queued after the one giving up.
    """
    return (
        f"connection pool exhausted: no connection free after waiting {waited:.3f} s "
        f"({limits}, {others_waiting} other callers still waiting)"
    )


def pool_stats(
    stats: PoolStats,
    *,
    pool_min: int,
    pool_max: int,
    pool_size: int,
    pool_available: int,
    requests_waiting: int,
    pop: bool = False,
) -> Dict[str, int]:
    """The gauges and counters in ``get_stats()`` form; ``pop`` also zeroes the counters."""
    gauges = {
        "pool_min": pool_min,
        "pool_max": pool_max,
        "pool_size": pool_size,
        "pool_available": pool_available,
        "requests_waiting": requests_waiting,
    }
    gauges.update(stats.pop() if pop else stats.snapshot())
    return gauges


def default_releaser(conn: Any) -> Any:
    """Dispose of a connection the generic way: call its ``close()`` if it has one.

    Returns what ``close()`` returned, so an async pool can await a coroutine ``close()``
    (asyncpg's) and a sync one can ignore the ``None``.
    """
    close = getattr(conn, "close", None)
    return close() if callable(close) else None


def count_setting(name: str, value: Any, *, minimum: int) -> int:
    """Validate a whole-number keyword (a size), naming it in errors."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def size_settings(min_size: Any, max_size: Any) -> Tuple[int, int]:
    """Validate the factory pools' ``min_size`` / ``max_size`` (at least 1 and min_size)."""
    count_setting("min_size", min_size, minimum=0)
    count_setting("max_size", max_size, minimum=1)
    if max_size < min_size:
        raise ValueError(f"max_size ({max_size}) must be at least min_size ({min_size})")
    return min_size, max_size


def seconds_setting(name: str, value: Any, *, allow_zero: bool) -> Optional[float]:
    """Validate an optional duration keyword of the factory pools, naming it in errors."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, got {type(value).__name__}")
    seconds = float(value)
    lowest_ok = seconds >= 0 if allow_zero else seconds > 0
    if math.isnan(seconds) or not lowest_ok or seconds > MAX_SECONDS:
        bound = "at least 0" if allow_zero else "more than 0"
        raise ValueError(
            f"{name} must be {bound} and at most {MAX_SECONDS:.0f} seconds, got {value!r}"
        )
    return seconds


def callable_setting(name: str, value: Any, *, required: bool = False) -> Any:
    """Validate a hook keyword (``factory``, ``releaser``, ``check``, ``reset``)."""
    if value is None and not required:
        return None
    if not callable(value):
        raise TypeError(f"{name} must be a callable, got {type(value).__name__}")
    return value


def prefill_count(n: Any, default: int) -> int:
    """Validate ``prefill(n)``'s count; ``None`` means ``default`` (``min_size``)."""
    if n is None:
        return default
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"prefill() needs a count of at least 0, got {n!r}")
    return n


def flag_setting(name: str, value: Any) -> bool:
    """Validate a True/False keyword of the factory pools (``lifo``)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value
