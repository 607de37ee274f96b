"""The floor under the hot-path targets: what the bookkeeping alone costs, with no engine.

Two minimal pools, every step inline (no core, no runner, no driver, no method but the
public/underscored pairs psycopg2.pool has too):

- ``FloorPool``: what the psycopg2 face must do on a checkout+checkin with ``pool_check=None``:
  psycopg2.pool's checkout keys, one record per connection with its timestamps (two clock
  reads per pair: ``usage_ms`` and leak detection need both), the borrowed books, the request
  and usage counters, psycopg2.pool's return check and the idle cap;
- ``ProbedFloorPool``: the same plus the zero-timeout ``poll()`` on checkout (the defaults).

They only know the path this script drives (an idle connection is always there, nothing
expires, nobody waits): they are yardsticks, not pools. Compared with stock psycopg2.pool and
pgpool_compat in the same run, in time (interleaved rounds, medians) and with
``--instructions`` in callgrind instructions (see ``overhead_instructions.py``):

    python benchmarks/hot_path_floor.py [--dsn DSN] [--rounds 15] [--instructions]
"""

from __future__ import annotations

import argparse
import os
import select
import statistics
import sys
import threading
import time
from contextlib import ExitStack
from typing import Any, Callable, Dict, List, Optional

import psycopg2
from psycopg2 import extensions

monotonic = time.monotonic
_IDLE = extensions.TRANSACTION_STATUS_IDLE


class _Record:
    __slots__ = ("checked_out_at", "conn", "idle_since", "poller")

    def __init__(self, conn: Any, now: float) -> None:
        self.conn = conn
        self.checked_out_at = self.idle_since = now
        self.poller = select.poll()
        self.poller.register(conn.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)


class FloorPool:
    """The bookkeeping of the psycopg2 face's hot path, inline (``pool_check=None``)."""

    probe = False

    def __init__(self, dsn: str, idle_cap: int = 1) -> None:
        self._lock = threading.RLock()  # reentrant, like the face's (subclasses need it)
        conn = psycopg2.connect(dsn)
        self._pool: List[Any] = [conn]
        self._records = {id(conn): _Record(conn, monotonic())}
        self._out: Dict[int, _Record] = {}
        self._used: Dict[Any, Any] = {}
        self._rused: Dict[int, Any] = {}
        self._keys = 0
        self._idle_cap = idle_cap
        self.closed = False
        self.requests = 0
        self.usage_ms = 0.0

    def getconn(self, key: Any = None) -> Any:
        return self._getconn(key)

    def _getconn(self, key: Any = None) -> Any:
        lock = self._lock
        lock.acquire()
        try:
            if self.closed:
                raise RuntimeError("closed")
            if key is None:
                key = self._keys = self._keys + 1
            conn = self._used.get(key)
            if conn is not None:
                return conn
            conn = self._pool.pop()
            conn_id = id(conn)
            record = self._records[conn_id]
            if self.probe and (conn.closed or record.poller.poll(0)):
                raise RuntimeError("this yardstick only knows live connections")
            record.checked_out_at = monotonic()
            self._out[conn_id] = record
            self.requests += 1
            self._used[key] = conn
            self._rused[conn_id] = key
            return conn
        finally:
            lock.release()

    def putconn(self, conn: Any, key: Any = None, close: bool = False) -> None:
        self._putconn(conn, key, close)

    def _putconn(self, conn: Any, key: Any = None, close: bool = False) -> None:
        lock = self._lock
        lock.acquire()
        try:
            if self.closed:
                raise RuntimeError("closed")
            conn_id = id(conn)
            key = self._rused.pop(conn_id)
            del self._used[key]
            record = self._out.pop(conn_id)
            now = monotonic()
            self.usage_ms += (now - record.checked_out_at) * 1000.0
            if close or conn.closed or conn.get_transaction_status() != _IDLE:
                raise RuntimeError("this yardstick only knows clean returns")
            if len(self._pool) >= self._idle_cap:
                raise RuntimeError("this yardstick keeps one connection")
            record.idle_since = now
            self._pool.append(conn)
        finally:
            lock.release()


class ProbedFloorPool(FloorPool):
    """``FloorPool`` with the zero-timeout socket probe on checkout (the defaults)."""

    probe = True


_HERE = os.path.dirname(os.path.abspath(__file__))
_FLOOR = f"import sys; sys.path.insert(0, {_HERE!r}); import hot_path_floor as f; "

#: The pools compared, as code making one (``dsn`` in scope), as in overhead_instructions.
POOLS: Dict[str, str] = {
    "psycopg2.pool (stock)": "import psycopg2.pool as m; p = m.ThreadedConnectionPool(1, 4, dsn)",
    "floor: bookkeeping inline": _FLOOR + "p = f.FloorPool(dsn)",
    "floor: bookkeeping + probe": _FLOOR + "p = f.ProbedFloorPool(dsn)",
    "pgpool_compat pool_check=None": (
        "import pgpool_compat as m; p = m.ThreadedConnectionPool(1, 4, dsn, pool_check=None)"
    ),
    "pgpool_compat defaults": "import pgpool_compat as m; p = m.ThreadedConnectionPool(1, 4, dsn)",
}


def _make(code: str, dsn: str) -> Any:
    scope: Dict[str, Any] = {"dsn": dsn}
    exec(code, scope)
    return scope["p"]


def _ns_per_pair(get: Callable[[], Any], put: Callable[[Any], None], pairs: int) -> float:
    started = time.perf_counter()
    for _ in range(pairs):
        put(get())
    return (time.perf_counter() - started) / pairs * 1e9


def wall_ratios(dsn: str, rounds: int, pairs: int) -> Dict[str, List[float]]:
    """Nanoseconds per pair of each pool, one figure per round, rounds interleaved."""
    pools = {name: _make(code, dsn) for name, code in POOLS.items()}
    times: Dict[str, List[float]] = {name: [] for name in pools}
    for _ in range(rounds):
        for name, pool in pools.items():
            times[name].append(_ns_per_pair(pool.getconn, pool.putconn, pairs))
    for pool in pools.values():
        if hasattr(pool, "closeall"):
            pool.closeall()
    return times


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="server to use (default: a throwaway one)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (time)")
    parser.add_argument("--pairs", type=int, default=20000, help="pairs per pool per round")
    parser.add_argument(
        "--instructions", action="store_true", help="also count instructions (valgrind)"
    )
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        dsn = args.dsn
        if dsn is None:
            from pgpool_compat.testing import PostgresServer

            dsn = stack.enter_context(PostgresServer()).dsn
        times = wall_ratios(dsn, args.rounds, args.pairs)
        counts: Dict[str, float] = {}
        if args.instructions:
            sys.path.insert(0, _HERE)
            import overhead_instructions

            counts = {name: overhead_instructions.cost_per_pair(code, dsn, 3000)
                      for name, code in POOLS.items()}  # fmt: skip
    stock = times["psycopg2.pool (stock)"]
    print(f"{'pool':32} {'ns/pair':>8} {'vs stock':>9} {'instructions':>13} {'vs stock':>9}")
    for name, figures in times.items():
        ratio = statistics.median(mine / theirs for mine, theirs in zip(figures, stock))
        line = f"{name:32} {statistics.median(figures):8.0f} {ratio:8.2f}x"
        if counts:
            cost = counts[name]
            line += f" {cost:13,.0f} {cost / counts['psycopg2.pool (stock)']:8.2f}x"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
