"""Stands in for escudeiro's ``AsyncPool``: change ``from escudeiro.ds.pools import AsyncPool``
(or ``from escudeiro.ds import AsyncPool``) to ``from pgpool_compat.compat.escudeiro import
AsyncPool``.

The signature and defaults are escudeiro's. Differences, on purpose: ``acquire()`` returns the
resource itself (escudeiro wraps it in a proxy); ``dispose()`` closes the idle resources and the
pool stays usable; a failed ``factory()`` never loses its slot; ``pool_size`` is never exceeded;
``pool_size`` below 1 is refused; a releaser's error while disposing is logged, not raised.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Generic, Optional, Type, TypeVar

from ..aio import AsyncConnectionPool

__all__ = ["AsyncPool"]

T = TypeVar("T")


class AsyncPool(Generic[T]):
    """An asyncio pool of at most ``pool_size`` resources made by ``await factory()``.

    ``releaser(resource)`` closes one (when recycled or disposed). ``queue_class`` picks the
    reuse order: ``asyncio.LifoQueue`` (default) hands out the last returned resource first,
    any other queue class the longest idle. ``pool_recycle`` seconds after it was made, a
    resource is released and replaced (0 or less: never), less up to 10% random jitter so a
    batch made together is not replaced together. ``acquire()`` waits as long as it takes; no
    ``start()`` is needed, so a module-level pool works inside ``asyncio.run()``.
    """

    def __init__(
        self,
        factory: Callable[[], Awaitable[T]],
        releaser: Callable[[T], Awaitable[None]],
        queue_class: Type[asyncio.Queue[Any]] = asyncio.LifoQueue,
        pool_size: int = 10,
        pool_recycle: float = 3600,
    ) -> None:
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be an int of at least 1, got {pool_size!r}")
        if not (isinstance(queue_class, type) and issubclass(queue_class, asyncio.Queue)):
            raise TypeError(f"queue_class must be an asyncio.Queue class, got {queue_class!r}")
        recycle = pool_recycle if pool_recycle > 0 else None
        self._pool: AsyncConnectionPool[T] = AsyncConnectionPool(
            factory,
            min_size=0,
            max_size=pool_size,
            timeout=None,
            releaser=releaser,
            max_lifetime=recycle,
            lifo=issubclass(queue_class, asyncio.LifoQueue),
        )
        self._pool_size = pool_size
        self._bound = False

    async def acquire(self) -> T:
        """Borrow a resource: an idle one, else a new one under ``pool_size``, else wait."""
        await self._bind()
        return await self._pool.acquire()

    async def release(self, resource: T) -> None:
        """Give a borrowed resource back."""
        await self._pool.release(resource)

    async def prefill(self, count: Optional[int] = None) -> None:
        """Make resources until ``count`` are idle (default and at most ``pool_size``), as far
        as free slots allow."""
        await self._bind()
        wanted = min(count or self._pool_size, self._pool_size)
        borrowed = self._pool.pool_size - self._pool.idle_count
        await self._pool.prefill(min(borrowed + wanted, self._pool_size))

    async def dispose(self) -> None:
        """Release every idle resource; borrowed ones come back later as usual."""
        if self._bound:
            await self._pool.close_idle()

    async def _bind(self) -> None:
        # The pool underneath serves the loop that started it; escudeiro needs no start().
        if not self._bound:
            await self._pool.start()
            self._bound = True

    def __repr__(self) -> str:
        return f"<escudeiro-style {self._pool!r}>"
