"""The ``pool_*`` keywords: split them from the connect arguments, validate, freeze.

No libpq parameter starts with ``pool_``, so every such keyword belongs to the pool and
everything else goes to ``psycopg2.connect`` untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from .settings import MAX_SECONDS
from .settings import check_seconds as seconds_setting

__all__ = ["MAX_SECONDS", "CheckSetting", "PoolOptions", "ResetSetting", "split_options"]

PREFIX = "pool_"

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
    for name in ("timeout", "max_idle", "max_lifetime", "leak_timeout", "ping_after"):
        if name in given:
            zero_ok = name in ("timeout", "ping_after")
            given[name] = seconds_setting(PREFIX + name, given[name], allow_zero=zero_ok)
    if "check_timeout" in given:
        given["check_timeout"] = seconds_setting(
            "pool_check_timeout", given["check_timeout"], allow_zero=False
        )
    for name in ("ping_after", "check_timeout"):
        if name in given and given[name] is None:
            raise TypeError(f"pool_{name} must be a number of seconds, got None")
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

