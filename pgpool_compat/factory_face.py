"""What the two factory pools share: ``ConnectionPool`` (threads) and ``AsyncConnectionPool``
(asyncio) take the same keywords, validated here once, and show the same read-only surface,
forwarded to their runner. Each keeps only its own verbs (sync or coroutines)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, Protocol, Tuple, TypeVar

from .engine.stats import Figures
from .settings import (
    Settings,
    check_callable,
    check_flag,
    check_name,
    check_seconds,
    check_sizes,
)

__all__ = ["FactoryFace", "factory_parts", "factory_settings", "prefill_count"]

DriverT = TypeVar("DriverT")

#: The keywords that become ``Settings``; the hooks go to the driver.
SETTINGS_KEYWORDS = (
    "min_size", "max_size", "timeout", "check", "check_timeout", "max_idle", "max_lifetime",
    "leak_timeout", "background", "lifo", "name",
)  # fmt: skip


def factory_settings(
    *,
    min_size: Any,
    max_size: Any,
    timeout: Any,
    check: Any,
    max_idle: Any,
    max_lifetime: Any,
    leak_timeout: Any,
    background: Any,
    lifo: Any,
    name: Any,
    check_timeout: Any = 5.0,
) -> Settings:
    """One ``Settings`` from a factory pool's keywords; each error names the keyword."""
    check_sizes("min_size", min_size, "max_size", max_size)
    bound = check_seconds("check_timeout", check_timeout, allow_zero=False, allow_none=False)
    assert bound is not None  # allow_none=False
    return Settings(
        name=check_name("name", name),
        min_size=min_size,
        max_size=max_size,
        timeout=check_seconds("timeout", timeout, allow_zero=True),
        check=check_callable("check", check),
        check_timeout=bound,
        max_idle=check_seconds("max_idle", max_idle, allow_zero=False),
        max_lifetime=check_seconds("max_lifetime", max_lifetime, allow_zero=False),
        leak_timeout=check_seconds("leak_timeout", leak_timeout, allow_zero=False),
        background=check_flag("background", background),
        lifo=check_flag("lifo", lifo),
    )


def factory_parts(
    make_driver: Callable[..., DriverT], factory_keyword: str, given: Mapping[str, Any]
) -> Tuple[Settings, DriverT]:
    """A factory pool's ``Settings`` and driver from its keywords (``given``: its
    ``__init__``'s ``locals()``, so each error names the keyword as the user wrote it)."""
    settings = factory_settings(**{k: given[k] for k in SETTINGS_KEYWORDS if k in given})
    driver = make_driver(
        check_callable(factory_keyword, given[factory_keyword], required=True),
        releaser=check_callable("releaser", given["releaser"]),
        reset=check_callable("reset", given["reset"]),
        configure=check_callable("configure", given["configure"]),
    )
    return settings, driver


def prefill_count(n: Any) -> Optional[int]:
    """``prefill()``'s argument: None (the minimum) or a count of at least 0."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ValueError(f"prefill() needs a count of at least 0, got {n!r}")
    return n


class _Runner(Protocol):
    """What the faces read from either runner."""

    name: str

    @property
    def closed(self) -> bool: ...

    @property
    def size(self) -> int: ...

    @property
    def idle_count(self) -> int: ...

    def stats(self, pop: bool = False) -> Dict[str, int]: ...

    def figures(self) -> Figures: ...


class FactoryFace:
    """The read-only surface of a factory pool, forwarded to its runner."""

    _runner: _Runner

    @property
    def closed(self) -> bool:
        return self._runner.closed

    @property
    def name(self) -> str:
        """``name``, or one made from the pool's id; every log line starts with it."""
        return self._runner.name

    @property
    def pool_size(self) -> int:
        """Connections the pool holds: idle, borrowed, and being opened or reset (0 once
        closed)."""
        return self._runner.size

    @property
    def idle_count(self) -> int:
        """Connections ready to be handed out at once (0 once closed)."""
        return self._runner.idle_count

    def get_stats(self) -> Dict[str, int]:
        """Gauges and counters, with psycopg_pool's key names."""
        return self._runner.stats()

    def pop_stats(self) -> Dict[str, int]:
        """Like ``get_stats()``, then zero the counters."""
        return self._runner.stats(pop=True)

    def figures(self) -> Figures:
        """The gauges metrics export."""
        return self._runner.figures()

    def __repr__(self) -> str:
        # Never the factory: it may close over a DSN with a password.
        state = "closed" if self.closed else f"size={self.pool_size} idle={self.idle_count}"
        return f"<{type(self).__name__} {self.name!r} {state}>"
