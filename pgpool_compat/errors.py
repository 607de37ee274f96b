"""Exceptions shared by every pool kind.

``PoolError`` is psycopg2's own class, so ``except psycopg2.pool.PoolError`` and
``except pgpool_compat.PoolError`` catch the same errors.
"""

from __future__ import annotations

from psycopg2.pool import PoolError

__all__ = ["PoolError", "PoolTimeout", "PoolTimeoutError", "WrongKeyError"]


class PoolTimeout(PoolError):  # type: ignore[misc]  # psycopg2 ships no stubs
    """No connection became available within the pool's timeout.

    The message starts with ``connection pool exhausted`` so code that tests
    ``"exhausted" in str(e)`` keeps working.
    """


#: The name the factory-based pools use; one class, two names.
PoolTimeoutError = PoolTimeout


class WrongKeyError(PoolError, KeyError):  # type: ignore[misc]
    """``putconn(conn, key)`` with a key the connection was not checked out with.

    Also a ``KeyError``, which is what psycopg2.pool raised, so code written against it
    keeps catching it; the message is our own clear one (KeyError would quote it).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
