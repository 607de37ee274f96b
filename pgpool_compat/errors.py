"""Exceptions shared by every pool kind.

``PoolError`` is psycopg2's own class, so ``except psycopg2.pool.PoolError`` and
``except pgpool_compat.PoolError`` catch the same errors. The engine raises the subclasses
below; each face translates them into its own library's classes where those differ.
"""

from __future__ import annotations

from psycopg2.pool import PoolError

__all__ = [
    "CLOSED_MESSAGE",
    "DUPLICATE_MESSAGE",
    "NOT_BORROWED_MESSAGE",
    "DuplicateConnection",
    "NotBorrowed",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "PoolTimeoutError",
    "WrongKeyError",
]

#: psycopg2.pool's own wording: application code tests ``"closed" in str(error)``.
CLOSED_MESSAGE = "connection pool is closed"

#: ``release()`` of an object the pool did not hand out, or already took back: every
#: factory face, sync and async, words it so.
NOT_BORROWED_MESSAGE = "trying to release a connection this pool did not hand out"

#: A connect that brought no new object (``%s``: what it brought instead).
DUPLICATE_MESSAGE = (
    "the connection factory returned %s; each connect must return a new connection "
    "(nothing was handed out and the slot is free again)"
)


class PoolTimeout(PoolError):  # type: ignore[misc]  # psycopg2 ships no stubs
    """No connection became available within the pool's timeout.

    The message starts with ``connection pool exhausted`` so code that tests
    ``"exhausted" in str(e)`` keeps working.
    """


#: The name the factory-based pools use; one class, two names.
PoolTimeoutError = PoolTimeout


class PoolClosed(PoolError):  # type: ignore[misc]
    """The pool was closed: nothing can be borrowed from or returned to it."""

    def __init__(self, message: str = CLOSED_MESSAGE) -> None:
        super().__init__(message)


class NotBorrowed(PoolError):  # type: ignore[misc]
    """An object given back that this pool did not lend, or that was already given back."""


class DuplicateConnection(PoolError):  # type: ignore[misc]
    """The factory returned an object the pool already holds (a shared client, ``None``):
    handing it out would give one object to two borrowers."""


class WrongKeyError(PoolError, KeyError):  # type: ignore[misc]
    """``putconn(conn, key)`` with a key the connection was not checked out with.

    Also a ``KeyError``, which is what psycopg2.pool raised, so code written against it
    keeps catching it; the message is our own clear one (KeyError would quote it).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
