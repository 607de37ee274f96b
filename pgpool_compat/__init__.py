"""pgpool_compat: a drop-in replacement for psycopg2.pool, with production behaviour opt-in.

Change ``from psycopg2 import pool`` to ``import pgpool_compat as pool`` and nothing else.
"""

from __future__ import annotations

from .errors import PoolError, PoolTimeout, PoolTimeoutError
from .pool import AbstractConnectionPool, SimpleConnectionPool, ThreadedConnectionPool

__version__ = "0.1.0"

__all__ = [
    "AbstractConnectionPool",
    "PoolError",
    "PoolTimeout",
    "PoolTimeoutError",
    "SimpleConnectionPool",
    "ThreadedConnectionPool",
    "__version__",
]
