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

from ..driver_async import AsyncFactoryDriver
from ..engine.asyncio import AsyncRunner
from ..settings import Labels, Settings, check_callable

__all__ = ["AsyncPool"]

T = TypeVar("T")


class AsyncPool(Generic[T]):
    """An asyncio pool of at most ``pool_size`` resources made by ``await factory()``.

    ``releaser(resource)`` closes one (when recycled or disposed). ``queue_class`` picks the
    reuse order: ``asyncio.LifoQueue`` (default) hands out the last returned resource first,
    any other queue class the longest idle. ``pool_recycle`` seconds after it was made, a
    resource is released and replaced (0 or less: never), less up to 10% random jitter so a
    batch made together is not replaced together. ``acquire()`` waits as long as it takes; no
    ``start()`` is needed: the pool serves the loop it is used in, so a module-level pool works
    inside ``asyncio.run()``.
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
        if isinstance(pool_recycle, bool) or not isinstance(pool_recycle, (int, float)):
            raise TypeError(f"pool_recycle must be a number of seconds, got {pool_recycle!r}")
        settings = Settings(
            max_size=pool_size,
            timeout=None,
            max_lifetime=float(pool_recycle) if pool_recycle > 0 else None,
            check=None,
            lifo=issubclass(queue_class, asyncio.LifoQueue),
            labels=Labels(max_size="pool_size"),
        )
        driver: AsyncFactoryDriver[T] = AsyncFactoryDriver(
            check_callable("factory", factory, required=True),
            releaser=check_callable("releaser", releaser, required=True),
        )
        self._runner: AsyncRunner[T] = AsyncRunner(settings, driver, kind="escudeiro.AsyncPool")
        self._pool_size = pool_size

    async def acquire(self) -> T:
        """Borrow a resource: an idle one, else a new one under ``pool_size``, else wait."""
        resource: T = await self._runner.acquire()
        return resource

    async def release(self, resource: T) -> None:
        """Give a borrowed resource back."""
        await self._runner.release(resource)

    async def prefill(self, count: Optional[int] = None) -> None:
        """Make resources until ``count`` are idle (default and at most ``pool_size``), as far
        as free slots allow."""
        wanted = min(count or self._pool_size, self._pool_size)
        runner = self._runner
        borrowed = runner.size - runner.idle_count
        await runner.prefill(min(borrowed + wanted, self._pool_size))

    async def dispose(self) -> None:
        """Release every idle resource; borrowed ones come back later as usual."""
        await self._runner.close_idle()

    def __repr__(self) -> str:
        return f"<escudeiro-style {self._runner!r}>"
