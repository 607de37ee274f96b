"""The driver seam: everything that touches a connection, and the drivers we ship.

The engine never calls a connection method itself; it asks a driver to connect, probe,
ping, reset and dispose. A new kind of connection is a new driver, not a new pool.

- ``Driver``: the seam (its methods, and which may do I/O, are documented on the class).
- ``Psycopg2Driver``: psycopg2 connections with psycopg2.pool's return rules.
- ``FactoryDriver``: whatever the user's ``factory()`` makes, closed by ``releaser``.

The async twins live in ``driver_async``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

from .dsn import call_without_secrets
from .health import ConnT, Driver, Psycopg2Driver, SessionDefaults

__all__ = [
    "ConnT",
    "Driver",
    "FactoryDriver",
    "Psycopg2Driver",
    "SessionDefaults",
    "default_releaser",
    "has_probe",
]

logger = logging.getLogger("pgpool_compat")


def has_probe(driver: Driver[Any]) -> bool:
    """Whether the driver's ``is_alive`` does anything: if not, checkouts skip the call."""
    return type(driver).is_alive is not Driver.is_alive


def default_releaser(conn: Any) -> Any:
    """Dispose of a connection the generic way: call its ``close()`` if it has one.

    Returns what ``close()`` returned, so an async pool can await a coroutine ``close()``
    (asyncpg's) and a sync one can ignore the ``None``.
    """
    close = getattr(conn, "close", None)
    return close() if callable(close) else None


class FactoryDriver(Driver[ConnT]):
    """Connections from user callables: ``factory()`` opens, ``configure(conn)`` runs once
    on each new one, ``reset(conn)`` on every return, ``releaser(conn)`` closes (default:
    ``conn.close()`` if there is one).

    There is no zero-round-trip probe for an unknown kind of connection: liveness is the
    pool's ``check`` callable, which the engine runs with its lock released.
    """

    def __init__(
        self,
        factory: Callable[[], ConnT],
        releaser: Optional[Callable[[ConnT], Any]] = None,
        reset: Optional[Callable[[ConnT], Any]] = None,
        configure: Optional[Callable[[ConnT], Any]] = None,
    ) -> None:
        self._factory = factory
        self._configure = configure
        self._releaser: Callable[[ConnT], Any] = releaser or default_releaser
        self._reset = reset
        self._needs_reset: Optional[bool] = reset is not None

    def connect(self) -> ConnT:
        # A psycopg2 parse error would quote the factory's DSN, password and all.
        return call_without_secrets(self._factory)

    def prepare(self, conn: ConnT) -> Any:
        if self._configure is not None:
            self._configure(conn)
        return None

    def return_state(self, conn: ConnT) -> Optional[bool]:
        # True makes the engine call reset() on every return, outside its lock.
        return self._needs_reset

    def reset(self, conn: ConnT, state: Any) -> None:
        if self._reset is not None:
            self._reset(conn)

    def dispose(self, conn: ConnT) -> None:
        try:
            self._releaser(conn)
        except Exception as error:  # closing must never fail the caller
            logger.debug("error releasing a connection: %s", type(error).__name__)
