"""Scenarios run on escudeiro's ``AsyncPool`` and on ``pgpool_compat.compat.escudeiro``.

``lib`` is a module with ``AsyncPool``. The original hands out a proxy around each resource;
the scenarios read resources through attributes only, so both sides compare equal. What the
face does differently on purpose (dispose() leaves the pool usable, errors for bad input) is in
tests/compat/test_escudeiro_face.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, List

from scenario_kit import AsyncConn, Counter, Slotted, Unhashable, signature


def _pool(lib: Any, counter: Counter, **kwargs: Any) -> Any:
    async def factory() -> AsyncConn:
        return AsyncConn(counter)

    async def releaser(resource: Any) -> None:
        counter.log.append(("released", resource.i))

    return lib.AsyncPool(factory, releaser, **kwargs)


def case_signature(lib: Any) -> Any:
    sig = signature(lib.AsyncPool.__init__)
    # The default queue class is compared by name: the original's repr is the class itself.
    return [[name, kind, default and default.split(".")[-1]] for name, kind, default in sig]


def case_subscriptable(lib: Any) -> Any:
    alias = lib.AsyncPool[int]
    return alias.__origin__ is lib.AsyncPool if hasattr(alias, "__origin__") else repr(alias)


def case_acquire_release_reuse(lib: Any) -> Any:
    async def main() -> Any:
        counter = Counter()
        pool = _pool(lib, counter, pool_size=3)
        a = await pool.acquire()
        await pool.release(a)
        b = await pool.acquire()
        c = await pool.acquire()
        trace = [a.i, b is a, c.i, counter.made]
        await pool.release(b)
        await pool.release(c)
        d = await pool.acquire()  # LIFO by default: the last one returned
        trace.append(d is c)
        await pool.release(d)
        await pool.dispose()
        return trace

    return asyncio.run(main())


def case_fifo_queue_class(lib: Any) -> Any:
    async def main() -> Any:
        counter = Counter()
        pool = _pool(lib, counter, pool_size=3, queue_class=asyncio.Queue)
        a, b = await pool.acquire(), await pool.acquire()
        await pool.release(a)
        await pool.release(b)
        first = await pool.acquire()
        await pool.release(first)
        await pool.dispose()
        return first is a

    return asyncio.run(main())


def case_pool_size_caps_and_waits(lib: Any) -> Any:
    async def main() -> Any:
        counter = Counter()
        pool = _pool(lib, counter, pool_size=2)
        a, b = await pool.acquire(), await pool.acquire()
        blocked = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.1)
        trace: List[Any] = [blocked.done(), counter.made]
        await pool.release(a)
        got = await asyncio.wait_for(blocked, 5)
        trace.append([got is a, counter.made])
        await pool.release(got)
        await pool.release(b)
        await pool.dispose()
        return trace

    return asyncio.run(main())


def case_prefill(lib: Any) -> Any:
    async def main() -> Any:
        trace = []
        for count in (None, 2, 10, 0):
            counter = Counter()
            pool = _pool(lib, counter, pool_size=3)
            await pool.prefill(count) if count is not None else await pool.prefill()
            made = counter.made
            got = [await pool.acquire() for _ in range(min(made, 3))]
            trace.append([count, made, counter.made])  # acquiring prefilled opens nothing new
            for resource in got:
                await pool.release(resource)
            await pool.dispose()
        return trace

    return asyncio.run(main())


def case_prefill_with_one_borrowed(lib: Any) -> Any:
    async def main() -> Any:
        counter = Counter()
        pool = _pool(lib, counter, pool_size=3)
        held = await pool.acquire()
        await pool.prefill()
        trace = [counter.made]
        await pool.release(held)
        await pool.dispose()
        return trace

    return asyncio.run(main())


def case_recycle(lib: Any) -> Any:
    async def main() -> Any:
        counter = Counter()
        pool = _pool(lib, counter, pool_size=2, pool_recycle=0.3)
        a = await pool.acquire()
        await pool.release(a)
        b = await pool.acquire()  # young: reused
        await pool.release(b)
        await asyncio.sleep(0.4)
        c = await pool.acquire()  # older than pool_recycle: released, replaced
        trace = [b is a, c.i != a.i, counter.log, counter.made]
        await pool.release(c)
        await pool.dispose()
        return trace

    return asyncio.run(main())


def case_recycle_zero_never_recycles(lib: Any) -> Any:
    async def main() -> Any:
        counter = Counter()
        pool = _pool(lib, counter, pool_size=1, pool_recycle=0)
        a = await pool.acquire()
        await pool.release(a)
        await asyncio.sleep(0.05)
        b = await pool.acquire()
        await pool.release(b)
        await pool.dispose()
        return [b is a, counter.made]

    return asyncio.run(main())


def case_dispose_releases_idle_not_borrowed(lib: Any) -> Any:
    async def main() -> Any:
        counter = Counter()
        pool = _pool(lib, counter, pool_size=3)
        a, b = await pool.acquire(), await pool.acquire()
        await pool.release(a)
        await pool.dispose()
        trace: List[Any] = [sorted(counter.log)]
        await pool.release(b)  # borrowed across dispose(): returned as usual
        await pool.dispose()
        trace.append(sorted(counter.log))
        return trace

    return asyncio.run(main())


def case_factory_error_propagates(lib: Any) -> Any:
    async def main() -> Any:
        async def failing() -> Any:
            raise ConnectionRefusedError("down")

        async def releaser(resource: Any) -> None:
            pass

        pool = lib.AsyncPool(failing, releaser, pool_size=2)
        try:
            await pool.acquire()
        except ConnectionRefusedError:
            return "raised"
        return "no error"

    return asyncio.run(main())


def case_odd_resources(lib: Any) -> Any:
    async def main() -> Any:
        out = []
        for make in (Unhashable, Slotted):
            counter = Counter()

            async def factory(make: Any = make, counter: Counter = counter) -> Any:
                return make(counter)

            async def releaser(resource: Any) -> None:
                resource.close()

            pool = lib.AsyncPool(factory, releaser, pool_size=2)
            a = await pool.acquire()
            await pool.release(a)
            again = await pool.acquire()
            out.append([again.i == a.i, counter.made])
            await pool.release(again)
            await pool.dispose()
        return out

    return asyncio.run(main())


def case_module_level_pool_used_in_asyncio_run(lib: Any) -> Any:
    # Built with no event loop running, as a module-level global is.
    counter = Counter()
    pool = _pool(lib, counter, pool_size=2)

    async def main() -> Any:
        conn = await pool.acquire()
        try:
            return conn.i
        finally:
            await pool.release(conn)
            await pool.dispose()

    started = time.monotonic()
    return [asyncio.run(main()), counter.log, time.monotonic() - started < 5]
