"""What metrics read from a pool: a weak registry of live pools, their figures, and the
observer hook that receives durations.

No third-party import here: every pool registers itself, metrics or not. The hook is off
(``None``) until ``pgpool_compat.metrics`` turns it on, and a pool with no observer runs no
observer code at all on its checkout and return paths (see each face's ``_set_observer``).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Callable, List, Mapping, NamedTuple, Optional, Protocol, Tuple

__all__ = [
    "Observed",
    "Observer",
    "PoolFigures",
    "live_pools",
    "observers_enabled",
    "register",
    "set_observer_factory",
    "target_name",
    "unregister",
]


class PoolFigures(NamedTuple):
    """One pool's gauges at one instant, in the database-client conventions' terms."""

    name: str  # pool_name, else host:port/dbname, else the pool's log name
    idle: int  # open connections ready to hand out
    used: int  # borrowed, or being opened, checked or reset
    max: int  # most connections open at once
    idle_max: int  # most idle connections kept open
    idle_min: int  # connections the pool keeps open (min size)
    pending_requests: int  # callers waiting for a connection
    timeouts: int  # checkouts that ran out of time, since the pool was made


class Observer(Protocol):
    """Receives one pool's durations in seconds (``time.monotonic()`` differences)."""

    def created(self, seconds: float) -> None:
        """A connection was opened (connect plus configure)."""

    def waited(self, seconds: float) -> None:
        """A checkout got its connection after this long (opening one included)."""

    def used(self, seconds: float) -> None:
        """A connection was returned this long after it was checked out."""


class Observed(Protocol):
    """What every face provides for metrics."""

    def _metrics_name(self) -> str:
        """The name metrics label the pool with (fixed for the pool's life)."""

    def _figures(self) -> Optional[PoolFigures]:
        """The pool's figures now; ``None`` once it is closed."""

    def _set_observer(self, observer: Optional[Observer]) -> None:
        """Start (an observer) or stop (``None``) reporting durations."""


#: psycopg2.connect keywords that are not connection parameters.
_NOT_LIBPQ = ("connection_factory", "cursor_factory", "async", "async_")

ObserverFactory = Callable[[Observed], Observer]

_lock = threading.Lock()
_live: weakref.WeakSet[Any] = weakref.WeakSet()
_factory: Optional[ObserverFactory] = None


def register(pool: Observed) -> None:
    """Called by each pool once it is built: metrics will see it while it lives."""
    with _lock:
        _live.add(pool)
        factory = _factory
    if factory is not None:
        pool._set_observer(factory(pool))


def unregister(pool: Observed) -> None:
    """Called by a pool whose construction failed."""
    with _lock:
        _live.discard(pool)


def live_pools() -> List[Observed]:
    """Every pool created and not yet garbage-collected (closed ones included)."""
    with _lock:
        return list(_live)


def observers_enabled() -> bool:
    """Whether pools currently get observers."""
    return _factory is not None


def set_observer_factory(factory: Optional[ObserverFactory]) -> None:
    """Give every live pool, and every pool made later, ``factory(pool)`` as its observer;
    ``None`` takes the observers away."""
    global _factory
    with _lock:
        _factory = factory
        pools = list(_live)
    for pool in pools:
        pool._set_observer(None if factory is None else factory(pool))


def target_name(args: Tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """``host:port/dbname`` of psycopg2 connect arguments, with libpq's defaults; never the
    user or password. A DSN libpq cannot parse gives ``"unknown"``."""
    from psycopg2 import ProgrammingError
    from psycopg2.extensions import make_dsn, parse_dsn

    libpq_kwargs = {k: v for k, v in kwargs.items() if k not in _NOT_LIBPQ}
    try:
        params = parse_dsn(make_dsn(*args[:1], **libpq_kwargs))
    except (ProgrammingError, TypeError):
        return "unknown"
    env = os.environ
    host = params.get("host") or env.get("PGHOST") or "localhost"
    port = params.get("port") or env.get("PGPORT") or "5432"
    user = params.get("user") or env.get("PGUSER") or _login()
    dbname = params.get("dbname") or env.get("PGDATABASE") or user
    return f"{host}:{port}/{dbname}"


def _login() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment: libpq would fail as well
        return "postgres"
