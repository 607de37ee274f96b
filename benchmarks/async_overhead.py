"""Checkout+checkin cost of ``AsyncConnectionPool`` with a no-I/O connection, in microseconds.

Measures the asyncio runner's own work (no driver I/O): the median of 7 fresh pools, 20,000
``acquire()``/``release()`` pairs each. To compare with another version, run it with that
version first on ``PYTHONPATH``, e.g. 0.1.0:

    git worktree add --detach /tmp/pgpool-0.1.0 41882bf
    PYTHONPATH=/tmp/pgpool-0.1.0 .venv/bin/python benchmarks/async_overhead.py
    PYTHONPATH=. .venv/bin/python benchmarks/async_overhead.py
"""

from __future__ import annotations

import asyncio
import statistics
import time

import pgpool_compat
from pgpool_compat.aio import AsyncConnectionPool

ROUNDS = 7
PAIRS = 20_000


class Connection:
    def close(self) -> None:
        pass


async def connect() -> Connection:
    return Connection()


async def one_round() -> float:
    """Microseconds per acquire+release on one fresh pool, after a warm-up."""
    async with AsyncConnectionPool(connect, min_size=1, max_size=1) as pool:
        for _ in range(1000):
            await pool.release(await pool.acquire())
        started = time.perf_counter()
        for _ in range(PAIRS):
            await pool.release(await pool.acquire())
        return (time.perf_counter() - started) / PAIRS * 1e6


def main() -> None:
    results = [asyncio.run(one_round()) for _ in range(ROUNDS)]
    print(
        f"pgpool_compat {pgpool_compat.__version__} from {pgpool_compat.__file__}: "
        f"median {statistics.median(results):.2f} us per acquire+release "
        f"(min {min(results):.2f}, max {max(results):.2f}, {ROUNDS} rounds)"
    )


if __name__ == "__main__":
    main()
