"""The ``pool_*`` keywords: split them from the connect arguments, validate, freeze.

No libpq parameter starts with ``pool_``, so every such keyword belongs to the pool and
everything else goes to ``psycopg2.connect`` untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

__all__ = ["MAX_SECONDS", "CheckSetting", "PoolOptions", "ResetSetting", "split_options"]

PREFIX = "pool_"

#: Longest accepted duration: one year. Longer is a typo, and overflows lock timeouts.
MAX_SECONDS = 365 * 24 * 3600.0

CheckSetting = Union[str, None, Callable[[Any], bool]]
ResetSetting = Union[str, Callable[[Any], None]]

CHECK_MODES = ("socket", "ping")
RESET_MODES = ("rollback", "discard")


@dataclass(frozen=True)
class PoolOptions:
    """Validated pool settings; the defaults keep psycopg2.pool's behaviour."""

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

    @property
    def idle_cap_is_maxconn(self) -> bool:
        """With ``pool_max_idle`` returned connections stay open up to ``maxconn``."""
        return self.max_idle is not None


OPTION_NAMES = tuple(PREFIX + field.name for field in fields(PoolOptions))


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
    return _validated(given), connect_kwargs


def _validated(given: Dict[str, Any]) -> PoolOptions:
    for name in ("timeout", "max_idle", "max_lifetime", "leak_timeout"):
        if given.get(name) is not None:
            given[name] = _seconds(name, given[name], allow_zero=name == "timeout")
    for name in ("ping_after", "check_timeout"):
        if name in given:
            given[name] = _seconds(name, given[name], allow_zero=name == "ping_after")
    check = given.get("check", "socket")
    if not (check is None or callable(check) or check in CHECK_MODES):
        raise ValueError(
            f"pool_check must be 'socket', 'ping', None or a callable, got {check!r}"
        )
    reset = given.get("reset", "rollback")
    if not (callable(reset) or reset in RESET_MODES):
        raise ValueError(f"pool_reset must be 'rollback', 'discard' or a callable, got {reset!r}")
    configure = given.get("configure")
    if configure is not None and not callable(configure):
        raise TypeError(f"pool_configure must be a callable, got {type(configure).__name__}")
    pool_name = given.get("name")
    if pool_name is not None and not isinstance(pool_name, str):
        raise TypeError(f"pool_name must be a string, got {type(pool_name).__name__}")
    for flag in ("background", "lifo"):
        if flag in given and not isinstance(given[flag], bool):
            raise TypeError(f"pool_{flag} must be True or False, got {given[flag]!r}")
    return PoolOptions(**given)


def _seconds(name: str, value: Any, *, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"pool_{name} must be a number of seconds, got {type(value).__name__}")
    seconds = float(value)
    lowest_ok = seconds >= 0 if allow_zero else seconds > 0
    if math.isnan(seconds) or not lowest_ok or seconds > MAX_SECONDS:
        bound = "at least 0" if allow_zero else "more than 0"
        raise ValueError(f"pool_{name} must be {bound} and at most {MAX_SECONDS:.0f} seconds, "
                         f"got {value!r}")
    return seconds
