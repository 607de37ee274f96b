"""The settings every generic-connection-pool pool shares (``generic_connection_pool.common``).

``BaseConnectionPool`` validates them and turns them into the engine's ``Settings``;
``EndpointPool`` takes the keywords the threading and asyncio pools share, and each of them
adds its runner. One endpoint is one sub-pool of the engine.
"""

from __future__ import annotations

import math
from typing import Any, ContextManager, Generic, Hashable, Optional, Tuple, TypeVar

from ...engine.core import Core
from ...settings import MAX_SECONDS, Labels, Settings, check_size
from .exceptions import ConnectionPoolNotFound

__all__ = [
    "BaseConnectionPool",
    "ConnectionT",
    "EndpointPool",
    "EndpointT",
    "InvalidPoolSettings",
]

EndpointT = TypeVar("EndpointT", bound=Hashable)
ConnectionT = TypeVar("ConnectionT")
ManagerT = TypeVar("ManagerT")

#: How the engine's messages name this library's keywords.
LABELS = Labels(timeout="acquire_timeout", max_size="max_size", min_size="min_idle")

#: What ``release()`` raises for a connection not borrowed from its endpoint (the original's
#: own ``RuntimeError``; its ``assert`` before it says "connection is not acquired").
NOT_ACQUIRED = "connection not acquired"


class InvalidPoolSettings(ValueError, AssertionError):
    """A pool setting out of range. generic-connection-pool reports these with ``assert``, so
    this is an ``AssertionError`` too (but is also raised under ``python -O``)."""


def _size(name: str, value: Any, minimum: int = 0) -> int:
    """A connection count (an int), refused with ``InvalidPoolSettings``."""
    try:
        return check_size(name, value, minimum=minimum)
    except (TypeError, ValueError) as error:
        raise InvalidPoolSettings(str(error)) from None


def _seconds(name: str, value: Any) -> float:
    """A number of seconds, any sign, ``inf`` included (the original compares them only);
    NaN, a bool or a non-number is refused with ``InvalidPoolSettings``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidPoolSettings(f"{name} must be a number of seconds, got {type(value).__name__}")
    seconds = float(value)
    if math.isnan(seconds):
        raise InvalidPoolSettings(f"{name} must be a number of seconds, got nan")
    return seconds


def _expiry(name: str, value: Any) -> Optional[float]:
    """``idle_timeout`` / ``max_lifetime`` for the engine: ``None`` (never) for ``inf``; 0 or
    less expires at once, as in the original."""
    seconds = _seconds(name, value)
    return None if seconds == math.inf else max(0.0, seconds)


def acquire_seconds(value: Any) -> Optional[float]:
    """``acquire_timeout`` (or a call's ``timeout``) for the engine: ``None`` (and beyond a
    year, ``inf`` included) waits as long as it takes; a negative one does not wait, as the
    original's timer."""
    if value is None:
        return None
    seconds = _seconds("acquire_timeout", value)
    return None if seconds > MAX_SECONDS else max(0.0, seconds)


class BaseConnectionPool(Generic[EndpointT, ConnectionT]):
    """Endpoint-keyed pool settings.

    ``max_size`` connections at most per endpoint and ``total_max_size`` over all of them;
    idle connections beyond ``min_idle`` per endpoint are closed after ``idle_timeout``
    seconds idle, and every connection after ``max_lifetime`` seconds (less up to 10%
    jitter; ``math.inf``: never). No connection is opened ahead of need. A bad setting
    raises ``InvalidPoolSettings``.
    """

    def __init__(
        self,
        *,
        idle_timeout: float = 60.0,
        max_lifetime: float = 3600.0,
        min_idle: int = 1,
        max_size: int = 10,
        total_max_size: int = 100,
    ) -> None:
        _size("min_idle", min_idle)
        _size("max_size", max_size, minimum=1)
        _size("total_max_size", total_max_size, minimum=1)
        self._max_idle = _expiry("idle_timeout", idle_timeout)
        self._lifetime = _expiry("max_lifetime", max_lifetime)
        if min_idle > max_size:
            raise InvalidPoolSettings(f"min_idle ({min_idle}) can't be greater than max_size")
        if max_size > total_max_size:
            raise InvalidPoolSettings(
                f"max_size ({max_size}) can't be greater than total_max_size ({total_max_size})"
            )
        if idle_timeout > max_lifetime:
            raise InvalidPoolSettings(
                f"idle_timeout ({idle_timeout}) can't be greater than max_lifetime"
            )
        self._idle_timeout = idle_timeout
        self._max_lifetime = max_lifetime
        self._min_idle = min_idle
        self._max_size = max_size
        self._total_max_size = total_max_size

    def _settings(
        self, acquire_timeout: Optional[float], background: Any, dispose_batch_size: Any
    ) -> Settings:
        """The engine settings of this pool; its own keywords are validated here.
        ``check_aliveness`` is the driver's ping, run at every checkout of an idle
        connection and never by the background collector (the original's collector only
        expires connections)."""
        return Settings(
            min_size=0,
            max_size=self._max_size,
            total_max_size=self._total_max_size,
            min_idle=self._min_idle,
            refill=False,  # min_idle shields idle connections from idle_timeout, opens none
            timeout=acquire_seconds(acquire_timeout),
            max_idle=self._max_idle,
            max_lifetime=self._lifetime,
            check="ping",  # no probe: the keeper checks nothing
            ping_after=0.0,
            background=bool(background),  # any truthy value, as the original's ``if``
            sweep_batch=_size("dispose_batch_size", dispose_batch_size or 0),
            labels=LABELS,
        )

    @property
    def idle_timeout(self) -> float:
        return self._idle_timeout

    @property
    def max_lifetime(self) -> float:
        return self._max_lifetime

    @property
    def min_idle(self) -> int:
        return self._min_idle

    @property
    def max_size(self) -> int:
        return self._max_size

    @property
    def total_max_size(self) -> int:
        return self._total_max_size

    @property
    def is_full(self) -> bool:
        """Whether ``total_max_size`` connections are held."""
        return self.get_size() >= self._total_max_size

    def get_size(self) -> int:
        """Connections held over all endpoints (idle, borrowed, being opened)."""
        raise NotImplementedError


class EndpointPool(
    BaseConnectionPool[EndpointT, ConnectionT], Generic[EndpointT, ConnectionT, ManagerT]
):
    """The keywords of the threading and asyncio pools, validated once; each pool starts
    its own runner in ``_start``."""

    def __init__(
        self,
        connection_manager: ManagerT,
        *,
        acquire_timeout: Optional[float] = None,
        background_collector: bool = False,
        dispose_batch_size: int = 0,
        dispose_timeout: Optional[float] = None,
        min_idle: int = 1,
        max_size: int = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(min_idle=min_idle, max_size=max_size, **kwargs)
        settings = self._settings(acquire_timeout, background_collector, dispose_batch_size)
        self._acquire_timeout = settings.timeout
        self._manager = connection_manager
        self._start(settings, dispose_timeout)

    def _start(self, settings: Settings, dispose_timeout: Optional[float]) -> None:
        """Build the runner over ``self._manager``."""
        raise NotImplementedError


def endpoint_size(sizes: Tuple[int, int, int], acquired: Optional[bool]) -> int:
    """From a runner's ``key_sizes()``: all (``None``), borrowed (``True``) or idle."""
    held, idle, borrowed = sizes
    if acquired is None:
        return held
    return borrowed if acquired else idle


def borrowed_as(core: Core, books: ContextManager[Any], conn: Any, endpoint: Hashable) -> Any:
    """The borrowed connection of ``endpoint`` that ``release(conn, endpoint)`` gives back:
    ``conn`` itself, or else one equal to it (the original books connections by equality:
    a ``(reader, writer)`` pair rebuilt after unpacking is the same connection there).

    Nothing changes when there is none: ``ConnectionPoolNotFound`` if ``endpoint`` holds no
    connection at all, else ``RuntimeError``, as the original. ``books`` guards the
    engine's books (the runner's lock; nothing on the asyncio loop). Connections are
    compared outside it, and one whose comparison raises is not equal.
    """
    entry = core.out.get(id(conn))
    if entry is not None and entry.key == endpoint:  # the fast path: the very object
        return conn
    with books:
        candidates = [other.conn for other in core.out.values() if other.key == endpoint]
        inherited = id(conn) in core.inherited
        held = core.key_sizes(endpoint)[0]
    for candidate in candidates:
        try:
            if candidate == conn:
                return candidate
        except Exception:  # a comparison that fails does not make them equal
            continue
    if inherited:  # borrowed before a fork: the runner lets it go quietly
        return conn
    if held == 0:
        raise ConnectionPoolNotFound()
    raise RuntimeError(NOT_ACQUIRED)
