"""One validated, frozen settings object per pool, and the helpers faces validate with.

Each face checks its own keywords with the ``check_*`` helpers, which name the keyword the
user wrote in every error, then builds one ``Settings`` (the psycopg2.pool face's ``pool_*``
keywords go through ``split_options`` into ``PoolOptions`` first). ``Labels`` carries the
face's names for the fields the engine mentions in its own messages (the timeout message), so
a ``ConnectionPool`` user reads ``timeout=2, max_size=5`` and a psycopg2.pool user reads
``pool_timeout=2, maxconn=5``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

__all__ = [
    "MAX_CONNECTIONS",
    "MAX_SECONDS",
    "CheckSetting",
    "Labels",
    "PoolOptions",
    "ResetSetting",
    "Settings",
    "check_callable",
    "check_choice",
    "check_flag",
    "check_name",
    "check_seconds",
    "check_size",
    "check_sizes",
    "split_options",
]

#: Longest accepted duration: one year. Longer is a typo, and overflows lock timeouts.
MAX_SECONDS = 365 * 24 * 3600.0

#: PostgreSQL cannot serve more connections than this (its MAX_BACKENDS); no pool needs more.
MAX_CONNECTIONS = 0x3FFFF

CheckSetting = Union[str, None, Callable[[Any], Any]]
ResetSetting = Union[str, Callable[[Any], None]]
#: The accepted values of a check and of a reset (``callable``: any callable).
CHECK_CHOICES = ("socket", "ping", None, callable)
RESET_CHOICES = ("rollback", "discard", callable)


def check_seconds(
    name: str,
    value: Any,
    *,
    allow_zero: bool,
    allow_none: bool = True,
    maximum: float = MAX_SECONDS,
) -> Optional[float]:
    """A duration in seconds (``None`` allowed unless ``allow_none=False``), at most
    ``maximum`` (``math.inf``: no bound)."""
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be a number of seconds, got None")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        accepted = "a number of seconds or None" if allow_none else "a number of seconds"
        raise TypeError(f"{name} must be {accepted}, got {type(value).__name__}")
    seconds = float(value)
    lowest_ok = seconds >= 0 if allow_zero else seconds > 0
    if math.isnan(seconds) or not lowest_ok or seconds > maximum:
        bound = "at least 0" if allow_zero else "more than 0"
        upper = f" and at most {maximum:.0f} seconds" if maximum != math.inf else ""
        raise ValueError(f"{name} must be {bound}{upper}, got {value!r}")
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


def check_sizes(min_name: str, low: Any, max_name: str, high: Any) -> None:
    """A minimum and a maximum connection count, the minimum no greater than the maximum."""
    check_size(min_name, low)
    check_size(max_name, high, minimum=1)
    if low > high:
        raise ValueError(f"{min_name} ({low}) must not be greater than {max_name} ({high})")


def check_name(name: str, value: Any) -> Optional[str]:
    """A pool's name: a string, or ``None`` for one made from the pool's id."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
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
    if (callable in choices and callable(value)) or any(
        value == c for c in choices if c is not callable
    ):
        return value
    named = ["a callable" if c is callable else repr(c) for c in choices]
    raise ValueError(f"{name} must be {', '.join(named[:-1])} or {named[-1]}, got {value!r}")


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
        check_size(names.max_size, self.max_size, minimum=1)
        if self.total_max_size is not None:
            check_size(names.total_max_size, self.total_max_size, minimum=1)
        check_sizes(names.min_size, self.min_size, names.max_size, self.cap)
        check_choice("check", self.check, CHECK_CHOICES)

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


# -- the psycopg2.pool face's ``pool_*`` keywords ------------------------------------------

#: No libpq parameter starts with ``pool_``: every such keyword belongs to the pool and
#: everything else goes to ``psycopg2.connect`` untouched.
PREFIX = "pool_"


@dataclass(frozen=True)
class PoolOptions:
    """The validated ``pool_*`` keywords; the defaults keep psycopg2.pool's behaviour."""

    timeout: Optional[float] = None
    max_idle: Optional[float] = None
    max_lifetime: Optional[float] = None
    check: CheckSetting = "socket"
    ping_after: float = 1.0
    check_timeout: float = 5.0
    reset: ResetSetting = "rollback"
    configure: Optional[Callable[[Any], None]] = None
    name: Optional[str] = None
    leak_timeout: Optional[float] = None
    background: bool = False
    lifo: bool = True


OPTION_NAMES = tuple(PREFIX + option.name for option in fields(PoolOptions))


def split_options(
    kwargs: Mapping[str, Any], *, allow_timeout: bool = True
) -> Tuple[PoolOptions, Dict[str, Any]]:
    """Return the validated pool options and the remaining connect keywords.

    Raises ``TypeError`` for an unknown ``pool_*`` name or a value of the wrong type and
    ``ValueError`` for a value out of range, naming the keyword either way.
    """
    connect_kwargs: Dict[str, Any] = {}
    given: Dict[str, Any] = {}
    for name, value in kwargs.items():
        if not name.startswith(PREFIX):
            connect_kwargs[name] = value
        elif name in OPTION_NAMES:
            given[name[len(PREFIX) :]] = value
        else:
            raise TypeError(
                f"unknown pool option {name!r}; known options: {', '.join(OPTION_NAMES)}"
            )
    if not allow_timeout and given.get("timeout") is not None:
        raise TypeError(
            "pool_timeout needs a pool that threads share: use ThreadedConnectionPool "
            "(SimpleConnectionPool is single-threaded, nobody could return a connection "
            "while it waits)"
        )
    return _pool_options(given), connect_kwargs


def _pool_options(given: Dict[str, Any]) -> PoolOptions:
    for name in ("timeout", "max_idle", "max_lifetime", "leak_timeout"):
        if name in given:
            given[name] = check_seconds(
                PREFIX + name, given[name], allow_zero=name == "timeout"
            )
    for name, zero_ok in (("ping_after", True), ("check_timeout", False)):
        if name in given:
            given[name] = check_seconds(
                PREFIX + name, given[name], allow_zero=zero_ok, allow_none=False
            )
    if "check" in given:
        check_choice("pool_check", given["check"], CHECK_CHOICES)
    if "reset" in given:
        check_choice("pool_reset", given["reset"], RESET_CHOICES)
    check_callable("pool_configure", given.get("configure"))
    check_name("pool_name", given.get("name"))
    for flag in ("background", "lifo"):
        if flag in given:
            check_flag(PREFIX + flag, given[flag])
    return PoolOptions(**given)
