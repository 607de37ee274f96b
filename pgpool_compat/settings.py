"""One validated, frozen settings object per pool, and the helpers faces validate with.

Each face checks its own keywords with the ``check_*`` helpers, which name the keyword the
user wrote in every error, then builds one ``Settings``. ``Labels`` carries the face's names
for the fields the engine mentions in its own messages (the timeout message), so a
``ConnectionPool`` user reads ``timeout=2, max_size=5`` and a psycopg2.pool user reads
``pool_timeout=2, maxconn=5``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

__all__ = [
    "MAX_CONNECTIONS",
    "MAX_SECONDS",
    "CheckSetting",
    "Labels",
    "Settings",
    "check_callable",
    "check_choice",
    "check_flag",
    "check_seconds",
    "check_size",
]

#: Longest accepted duration: one year. Longer is a typo, and overflows lock timeouts.
MAX_SECONDS = 365 * 24 * 3600.0

#: PostgreSQL cannot serve more connections than this (its MAX_BACKENDS); no pool needs more.
MAX_CONNECTIONS = 0x3FFFF

CheckSetting = Union[str, None, Callable[[Any], Any]]
CHECK_MODES = ("socket", "ping")


def check_seconds(
    name: str, value: Any, *, allow_zero: bool, allow_none: bool = True
) -> Optional[float]:
    """A duration in seconds (``None`` allowed unless ``allow_none=False``)."""
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be a number of seconds, got None")
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


def check_size(name: str, value: Any, *, minimum: int = 0) -> int:
    """A connection count: an int (not a bool, not a float) from ``minimum`` to
    ``MAX_CONNECTIONS``. A wrong value's type is named, never a string value itself: a
    swapped argument may be a DSN with a password in it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    if value > MAX_CONNECTIONS:
        raise ValueError(f"{name} must be at most {MAX_CONNECTIONS} (PostgreSQL's limit)")
    return value


def check_callable(name: str, value: Any, *, required: bool = False) -> Any:
    """A hook (``factory``, ``releaser``, ``check``, ``reset``...); ``None`` unless required."""
    if value is None and not required:
        return None
    if not callable(value):
        raise TypeError(f"{name} must be a callable, got {type(value).__name__}")
    return value


def check_flag(name: str, value: Any) -> bool:
    """A True/False keyword."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """One of ``choices``, or a callable when ``callable`` is among them."""
    if value in choices or (callable in choices and callable(value)):
        return value
    named = ", ".join("a callable" if c is callable else repr(c) for c in choices)
    raise ValueError(f"{name} must be one of {named}; got {value!r}")


@dataclass(frozen=True)
class Labels:
    """The face's keyword for each field the engine names in its messages."""

    timeout: str = "timeout"
    max_size: str = "max_size"
    min_size: str = "min_size"
    total_max_size: str = "total_max_size"


@dataclass(frozen=True)
class Settings:
    """Everything a runner needs to know about one pool; see ENGINE_API.md for each field.

    The defaults are the generic pool's; each face passes its own.
    """

    name: Optional[str] = None
    min_size: int = 0
    max_size: int = 1
    total_max_size: Optional[int] = None
    min_idle: int = 0
    idle_cap: Optional[int] = None
    timeout: Optional[float] = None
    max_idle: Optional[float] = None
    max_lifetime: Optional[float] = None
    check: CheckSetting = "socket"
    ping_after: float = 1.0
    check_timeout: float = 5.0
    leak_timeout: Optional[float] = None
    background: bool = False
    sweep_batch: int = 0
    lifo: bool = True
    refill: bool = True
    labels: Labels = field(default_factory=Labels)

    def __post_init__(self) -> None:
        # The faces validate their own keywords first; these catch an inconsistent build.
        names = self.labels
        check_size(names.min_size, self.min_size)
        check_size(names.max_size, self.max_size, minimum=1)
        if self.min_size > self.cap:
            raise ValueError(
                f"{names.min_size} ({self.min_size}) must not be greater than "
                f"{names.max_size} ({self.cap})"
            )
        if self.total_max_size is not None:
            check_size(names.total_max_size, self.total_max_size, minimum=1)
        if not (self.check is None or callable(self.check) or self.check in CHECK_MODES):
            raise ValueError(f"check must be 'socket', 'ping', None or a callable: {self.check!r}")

    @property
    def needs_upkeep(self) -> bool:
        """Whether anything can go stale or leak: then the hot paths run lazy upkeep."""
        return (
            self.max_idle is not None
            or self.max_lifetime is not None
            or self.leak_timeout is not None
        )

    @property
    def cap(self) -> int:
        """Most connections the whole pool may hold."""
        return self.max_size if self.total_max_size is None else self.total_max_size

    def describe_limits(self, timeout: Optional[float], max_size: int) -> str:
        """``"timeout=2, max_size=5"`` in the face's own words, for the timeout message
        (the values given: a call's own timeout, a live size limit)."""
        names = self.labels
        wait = "None" if timeout is None else f"{timeout:g}"
        limits = f"{names.timeout}={wait}, {names.max_size}={max_size}"
        if self.total_max_size is not None:
            limits += f", {names.total_max_size}={self.total_max_size}"
        return limits
