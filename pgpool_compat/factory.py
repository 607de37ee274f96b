"""``ConnectionPool``: a thread-safe pool of whatever a factory makes, on the engine.

A thin face: it validates its keywords (errors name them), builds one ``Settings`` and a
``FactoryDriver`` from the user's callables, and forwards to the threaded runner, which owns
waiting, expiry, checks, reset, upkeep and stats. It is not a psycopg2.pool class: one
vocabulary (``acquire``/``release``/``close_all``), and ``timeout=None`` waits for ever.
"""

from __future__ import annotations

from contextlib import contextmanager, suppress
from functools import partial
from typing import Any, Callable, Generic, Iterator, Optional, TypeVar

from .driver import FactoryDriver
from .engine.threaded import DEFAULT, ThreadedRunner
from .errors import PoolClosed
from .factory_face import FactoryFace, factory_parts, prefill_count

__all__ = ["ConnectionPool", "FactoryDriver"]

ConnT = TypeVar("ConnT")


class ConnectionPool(FactoryFace, Generic[ConnT]):
    """A thread-safe pool of whatever ``factory()`` returns.

    Opens ``min_size`` connections at once and never holds more than ``max_size``.
    ``acquire()`` waits up to ``timeout`` seconds for a free connection, first come first
    served, then raises ``PoolTimeoutError`` (``None``: wait as long as it takes; ``0``:
    fail at once). ``check(conn) -> bool`` runs before an idle connection is handed out
    (a false result or an exception discards it and the next is tried); ``reset(conn)`` runs
    on return (an exception discards the connection, never the slot); ``configure(conn)``
    once per new connection; ``releaser(conn)`` closes one (default: ``conn.close()``).
    Returned connections stay open up to ``max_size``; ``max_idle`` closes those idle longer,
    never going below ``min_size``; ``max_lifetime`` retires connections older than that,
    less up to 10% random jitter. ``lifo=False`` reuses the longest-idle first.
    ``leak_timeout`` warns (with the borrower's stack) about connections held longer;
    ``background=True`` runs a keeper thread that refills to ``min_size`` and trims.
    """

    def __init__(
        self,
        factory: Callable[[], ConnT],
        *,
        min_size: int = 1,
        max_size: int = 5,
        timeout: Optional[float] = 30.0,
        releaser: Optional[Callable[[ConnT], Any]] = None,
        check: Optional[Callable[[ConnT], Any]] = None,
        reset: Optional[Callable[[ConnT], Any]] = None,
        configure: Optional[Callable[[ConnT], Any]] = None,
        max_idle: Optional[float] = None,
        max_lifetime: Optional[float] = None,
        leak_timeout: Optional[float] = None,
        background: bool = False,
        lifo: bool = True,
        name: Optional[str] = None,
    ) -> None:
        settings, driver = factory_parts(FactoryDriver[ConnT], "factory", locals())
        # min_size is opened here, before the keeper starts (a connect error is raised).
        self._runner: ThreadedRunner[ConnT] = ThreadedRunner(
            settings, driver, kind=type(self).__name__, prefill=True
        )
        # Hot path: the runner's own methods, one call frame fewer per checkout and return
        # (unless a subclass overrides them). acquire's key is bound to None, so an argument
        # is a timeout (psycopg_pool's getconn(timeout)), never a sub-pool key past max_size;
        # a partial of the plain function costs about 270 instructions a pair, a frame 450.
        if type(self).acquire is ConnectionPool.acquire:
            runner = self._runner
            self.acquire = partial(type(runner).acquire, runner, None)  # type: ignore[method-assign]
        if type(self).release is ConnectionPool.release:
            self.release = self._runner.release  # type: ignore[method-assign]

    # -- borrowing -------------------------------------------------------------------------

    def acquire(self, timeout: Optional[float] = DEFAULT) -> ConnT:
        """Borrow a connection, waiting up to ``timeout`` for one (``PoolTimeoutError``).

        ``timeout`` (positional or keyword) replaces the pool's for this call, with the
        same meaning: seconds, ``0`` fails at once, ``None`` waits as long as it takes."""
        return self._runner.acquire(None, timeout)

    def release(self, conn: ConnT) -> None:
        """Give a borrowed connection back (``reset`` runs, unless it is past its lifetime).

        A connection this pool did not lend, or one given back twice, raises ``PoolError``
        and changes nothing; after ``close_all()`` a returned connection is already closed.
        """
        self._runner.release(conn)

    @contextmanager
    def connection(self) -> Iterator[ConnT]:
        """``with pool.connection() as conn:`` borrows and always gives back.

        It neither commits nor rolls back: a generic connection may have no transactions.
        Use ``reset`` for clean-up on return.
        """
        conn = self._runner.acquire()
        try:
            yield conn
        finally:
            with suppress(PoolClosed):  # close_all() ran meanwhile and already closed it
                self._runner.release(conn)

    # -- the rest --------------------------------------------------------------------------

    def prefill(self, n: Optional[int] = None) -> None:
        """Open connections until the pool holds ``n`` (default ``min_size``, at most
        ``max_size``). A connect error is raised; connections already opened stay."""
        self._runner.prefill(prefill_count(n))

    def check(self) -> int:
        """Run ``check`` on every idle connection now and close the failing ones; return
        how many were closed."""
        return self._runner.check()

    def close_all(self) -> None:
        """Close every connection, idle or borrowed, and fail the waiters; idempotent."""
        self._runner.close()

    def __enter__(self) -> ConnectionPool[ConnT]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._runner.close()
