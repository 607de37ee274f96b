"""pgpool_compat: a drop-in replacement for psycopg2.pool, with production behaviour opt-in.

Change ``from psycopg2 import pool`` to ``import pgpool_compat as pool`` and nothing else.

The PoolManager, factory and async names load on first use: the manager reads its size
settings from the environment at import, and a bad value there must not break the import of
the psycopg2.pool replacement.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from .errors import PoolError, PoolTimeout, PoolTimeoutError, WrongKeyError
from .pool import AbstractConnectionPool, SimpleConnectionPool, ThreadedConnectionPool

if TYPE_CHECKING:
    from .aio import AsyncConnectionPool
    from .factory import ConnectionPool
    from .manager import (
        ActivePoolError,
        Connection,
        ConnectionBusyError,
        ConnectionNotFoundError,
        NoIdleConnectionsError,
        Pool,
        PoolFullError,
        PoolManager,
        PoolManagerError,
        QueriesException,
        pool_id,
    )

__version__ = "0.2.0.dev0"

# As queries does for its own logger: a program that never configures logging gets no
# output from this package (no "last resort" WARNING lines on stderr); one that does, through
# the root logger or pytest's caplog, gets every record as before.
logging.getLogger(__name__).addHandler(logging.NullHandler())

_LAZY = {
    "AsyncConnectionPool": "aio",
    "ConnectionPool": "factory",
    **{
        name: "manager"
        for name in (
            "ActivePoolError",
            "Connection",
            "ConnectionBusyError",
            "ConnectionNotFoundError",
            "NoIdleConnectionsError",
            "Pool",
            "PoolFullError",
            "PoolManager",
            "PoolManagerError",
            "QueriesException",
            "pool_id",
        )
    },
}

__all__ = [
    "AbstractConnectionPool",
    "ActivePoolError",
    "AsyncConnectionPool",
    "Connection",
    "ConnectionBusyError",
    "ConnectionNotFoundError",
    "ConnectionPool",
    "NoIdleConnectionsError",
    "Pool",
    "PoolError",
    "PoolFullError",
    "PoolManager",
    "PoolManagerError",
    "PoolTimeout",
    "PoolTimeoutError",
    "QueriesException",
    "SimpleConnectionPool",
    "ThreadedConnectionPool",
    "WrongKeyError",
    "__version__",
    "pool_id",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pgpool_compat' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
