"""The settings every generic-connection-pool pool shares (``generic_connection_pool.common``).

``BaseConnectionPool`` validates them and turns them into the engine's ``Settings``;
``EndpointPool`` takes the keywords the threading and asyncio pools share, and each of them
adds its runner. One endpoint is one sub-pool of the engine.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, Hashable, Optional, Tuple, TypeVar

from ...settings import CheckSetting, Labels, Settings, check_flag, check_seconds, check_size

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


class InvalidPoolSettings(ValueError, AssertionError):
    """A pool setting out of range. generic-connection-pool reports these with ``assert``, so
    this is an ``AssertionError`` too (but is also raised under ``python -O``)."""


class BaseConnectionPool(Generic[EndpointT, ConnectionT]):
    """Endpoint-keyed pool settings.

    ``max_size`` connections at most per endpoint and ``total_max_size`` over all of them;
    idle connections beyond ``min_idle`` per endpoint are closed after ``idle_timeout``
    seconds idle, and every connection after ``max_lifetime`` seconds (less up to 10%
    jitter). No connection is opened ahead of need.
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
        check_size("min_idle", min_idle)
        check_size("max_size", max_size, minimum=1)
        check_size("total_max_size", total_max_size, minimum=1)
        idle = check_seconds("idle_timeout", idle_timeout, allow_zero=False, allow_none=False)
        lifetime = check_seconds("max_lifetime", max_lifetime, allow_zero=False, allow_none=False)
        if min_idle > max_size:
            raise InvalidPoolSettings(f"min_idle ({min_idle}) can't be greater than max_size")
        if max_size > total_max_size:
            raise InvalidPoolSettings(
                f"max_size ({max_size}) can't be greater than total_max_size ({total_max_size})"
            )
        assert idle is not None and lifetime is not None
        if idle > lifetime:
            raise InvalidPoolSettings(
                f"idle_timeout ({idle_timeout}) can't be greater than max_lifetime"
            )
        self._idle_timeout = idle
        self._max_lifetime = lifetime
        self._min_idle = min_idle
        self._max_size = max_size
        self._total_max_size = total_max_size

    def _settings(
        self,
        acquire_timeout: Optional[float],
        background: Any,
        dispose_batch_size: Any,
        *,
        check: CheckSetting,
    ) -> Settings:
        """The engine settings of this pool; its own keywords are validated here. ``check``
        is how the driver runs ``check_aliveness``: as its probe ("socket", sync managers)
        or as its ping at every checkout ("ping", asyncio managers)."""
        return Settings(
            min_size=0,
            max_size=self._max_size,
            total_max_size=self._total_max_size,
            min_idle=self._min_idle,
            refill=False,  # min_idle shields idle connections from idle_timeout, opens none
            timeout=check_seconds("acquire_timeout", acquire_timeout, allow_zero=True),
            max_idle=self._idle_timeout,
            max_lifetime=self._max_lifetime,
            check=check,
            ping_after=0.0,
            background=check_flag("background_collector", background),
            sweep_batch=check_size("dispose_batch_size", dispose_batch_size),
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

    #: How the driver runs ``check_aliveness``: as its probe ("socket", sync managers) or as
    #: its ping at every checkout ("ping", asyncio managers).
    _check: ClassVar[str]

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
        settings = self._settings(
            acquire_timeout, background_collector, dispose_batch_size, check=self._check
        )
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
