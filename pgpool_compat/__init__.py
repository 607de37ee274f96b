"""pgpool_compat: a drop-in replacement for psycopg2.pool, with production behaviour opt-in."""

from __future__ import annotations

from .errors import PoolError, PoolTimeout, PoolTimeoutError

__version__ = "0.1.0"

__all__ = ["PoolError", "PoolTimeout", "PoolTimeoutError", "__version__"]
