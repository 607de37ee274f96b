"""One small adapter per pool the bench compares.

Each adapter turns a pool into a :class:`BenchPool`: checkout, checkin, how many connections it
has opened, and which errors mean "no connection free right now". ``acquire`` and ``release``
are the pool's own bound methods wherever its API allows, so the timing loops add no call layer
of ours to one pool and not to another.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple, Type

import psycopg2
from psycopg2 import extensions

from .._commands import pip_install

__all__ = [
    "PRODUCTION_OPTIONS",
    "BenchPool",
    "PoolSpec",
    "available_pools",
    "run_select_one",
]

#: The extra that installs every compared pool (and the embedded server).
BENCH_EXTRA = "'pgpool_compat[bench]'"

#: The "production" options the README recommends, benchmarked as their own row.
PRODUCTION_OPTIONS: Dict[str, Any] = {
    "pool_timeout": 30,
    "pool_max_idle": 300,
    "pool_max_lifetime": 3600,
    "pool_check": "socket",
}


class BenchPool:
    """A pool as the scenarios drive it.

    ``exhausted`` lists the exceptions meaning "no connection free now"; when ``waits`` is
    False the pool cannot wait, and the scenarios retry the way its users do.
    """

    __slots__ = ("_close", "_opened", "acquire", "exhausted", "release", "waits")

    def __init__(
        self,
        *,
        acquire: Callable[[], Any],
        release: Callable[[Any], Any],
        opened: Callable[[], int],
        close: Callable[[], Any],
        exhausted: Tuple[Type[BaseException], ...],
        waits: bool,
    ) -> None:
        self.acquire = acquire
        self.release = release
        self.exhausted = exhausted
        self.waits = waits
        self._opened = opened
        self._close = close

    def opened(self) -> int:
        """How many connections this pool has opened so far."""
        return self._opened()

    def close(self) -> None:
        """Close the pool and every connection it holds."""
        self._close()


#: ``open(dsn, minconn, maxconn)`` -> a ready pool.
Opener = Callable[[str, int, int], BenchPool]


@dataclass(frozen=True)
class PoolSpec:
    """A pool the bench can open: its row label (with version) and where it takes part."""

    key: str
    label: str
    open: Opener
    scenarios: Optional[FrozenSet[str]] = None  # None: every scenario
    is_stock: bool = False
    is_limit: bool = False

    def runs_in(self, scenario: str) -> bool:
        return self.scenarios is None or scenario in self.scenarios


class _ConnectCounter:
    """Counts connections opened through the psycopg2 ``connection_factory`` it builds."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()
        counter = self

        class CountedConnection(extensions.connection):  # type: ignore[misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                counter.add()

        self.factory: type = CountedConnection

    def add(self) -> None:
        with self._lock:
            self._count += 1

    def value(self) -> int:
        return self._count


def run_select_one(conn: Any) -> None:
    """One unit of work: ``SELECT 1`` and commit, so every pool gets back an idle connection.

    Written against the DB-API only, so it serves psycopg2, psycopg 3 and the wrappers
    SQLAlchemy and DBUtils hand out.
    """
    cur = conn.cursor()
    try:
        cur.execute("SELECT 1")
        cur.fetchone()
    finally:
        cur.close()
    conn.commit()


def _close_connection(conn: Any) -> None:
    """Check-in for pools whose connection proxies go back to the pool on ``close()``."""
    conn.close()


def _version(module: str, attribute: str = "__version__") -> str:
    return str(getattr(importlib.import_module(module), attribute)).split()[0]


def _open_stock(dsn: str, minconn: int, maxconn: int) -> BenchPool:
    from psycopg2 import pool as stock

    counter = _ConnectCounter()
    pool = stock.ThreadedConnectionPool(minconn, maxconn, dsn, connection_factory=counter.factory)
    return BenchPool(
        acquire=pool.getconn,
        release=pool.putconn,
        opened=counter.value,
        close=pool.closeall,
        exhausted=(stock.PoolError,),
        waits=False,
    )


def _pgpool_opener(options: Dict[str, Any]) -> Opener:
    def open_pgpool(dsn: str, minconn: int, maxconn: int) -> BenchPool:
        import pgpool_compat

        counter = _ConnectCounter()
        pool = pgpool_compat.ThreadedConnectionPool(
            minconn, maxconn, dsn, connection_factory=counter.factory, **options
        )
        return BenchPool(
            acquire=pool.getconn,
            release=pool.putconn,
            opened=counter.value,
            close=pool.closeall,
            exhausted=(pgpool_compat.PoolError,),
            waits=options.get("pool_timeout") is not None,
        )

    return open_pgpool


def _open_factory_pool(dsn: str, minconn: int, maxconn: int) -> BenchPool:
    """``ConnectionPool`` making psycopg2 connections: the engine's threaded runner with a
    factory driver (no socket probe: compare it with the ``pool_check=None`` row)."""
    import psycopg2

    import pgpool_compat

    counter = _ConnectCounter()

    def factory() -> Any:
        return psycopg2.connect(dsn, connection_factory=counter.factory)

    pool: Any = pgpool_compat.ConnectionPool(
        factory, min_size=minconn, max_size=maxconn, timeout=0
    )
    return BenchPool(
        acquire=pool.acquire,
        release=pool.release,
        opened=counter.value,
        close=pool.close_all,
        exhausted=(pgpool_compat.PoolError,),
        waits=False,
    )


def _open_psycopg_pool(dsn: str, minconn: int, maxconn: int) -> BenchPool:
    from psycopg_pool import ConnectionPool, PoolTimeout

    pool = ConnectionPool(dsn, min_size=minconn, max_size=maxconn, open=True)
    try:
        pool.wait(timeout=30.0)
    except BaseException:
        pool.close()
        raise

    def opened() -> int:
        return int(pool.get_stats().get("connections_num", 0))

    return BenchPool(
        acquire=pool.getconn,
        release=pool.putconn,
        opened=opened,
        close=pool.close,
        exhausted=(PoolTimeout,),
        waits=True,
    )


def _open_queuepool(dsn: str, minconn: int, maxconn: int) -> BenchPool:
    from sqlalchemy.exc import TimeoutError as QueuePoolTimeout
    from sqlalchemy.pool import QueuePool

    counter = _ConnectCounter()

    def creator() -> Any:
        return psycopg2.connect(dsn, connection_factory=counter.factory)

    # QueuePool opens lazily and keeps pool_size connections; no overflow caps it at maxconn.
    pool = QueuePool(creator, pool_size=maxconn, max_overflow=0)
    return BenchPool(
        acquire=pool.connect,
        release=_close_connection,
        opened=counter.value,
        close=pool.dispose,
        exhausted=(QueuePoolTimeout,),
        waits=True,
    )


def _open_dbutils(dsn: str, minconn: int, maxconn: int) -> BenchPool:
    from dbutils.pooled_db import PooledDB, TooManyConnections

    counter = _ConnectCounter()
    # blocking=True is PooledDB's documented way to wait at maxconnections.
    pool = PooledDB(
        psycopg2,
        mincached=minconn,
        maxconnections=maxconn,
        blocking=True,
        dsn=dsn,
        connection_factory=counter.factory,
    )
    return BenchPool(
        acquire=pool.connection,
        release=_close_connection,
        opened=counter.value,
        close=pool.close,
        exhausted=(TooManyConnections,),
        waits=True,
    )


def _open_held(dsn: str, minconn: int, maxconn: int) -> BenchPool:
    """One connection opened once and kept: the limit a pool's ``query`` row is held to."""
    counter = _ConnectCounter()
    conn = psycopg2.connect(dsn, connection_factory=counter.factory)

    def acquire() -> Any:
        return conn

    def release(_conn: Any) -> None:
        """Nothing to give back: the connection stays held."""

    return BenchPool(
        acquire=acquire,
        release=release,
        opened=counter.value,
        close=conn.close,
        exhausted=(),
        waits=True,
    )


def available_pools() -> Tuple[List[PoolSpec], List[str]]:
    """The pools installed here, in table order, and one note per pool that is missing."""
    specs: List[PoolSpec] = []
    notes: List[str] = []
    psycopg2_version = _version("psycopg2")
    specs.append(
        PoolSpec(
            "held",
            f"held connection (psycopg2 {psycopg2_version}, the limit)",
            _open_held,
            frozenset({"query"}),
            is_limit=True,
        )
    )
    specs.append(PoolSpec("stock", f"psycopg2.pool {psycopg2_version}", _open_stock, is_stock=True))
    specs.extend(_pgpool_specs(notes))
    optional: List[Tuple[str, str, str, Opener]] = [
        ("psycopg_pool", "psycopg_pool", "psycopg_pool {}", _open_psycopg_pool),
        ("queuepool", "sqlalchemy", "SQLAlchemy QueuePool {}", _open_queuepool),
        ("dbutils", "dbutils", "DBUtils PooledDB {}", _open_dbutils),
    ]
    for key, module, label, opener in optional:
        try:
            version = _version(module)
        except ImportError:
            notes.append(
                f"{module} is not installed: its rows are left out "
                f"({pip_install(BENCH_EXTRA)})"
            )
            continue
        specs.append(PoolSpec(key, label.format(version), opener))
    return specs, notes


def _pgpool_specs(notes: List[str]) -> List[PoolSpec]:
    import pgpool_compat

    if not hasattr(pgpool_compat, "ThreadedConnectionPool"):
        notes.append("pgpool_compat.ThreadedConnectionPool is not available: its rows are left out")
        return []
    name = f"pgpool_compat {pgpool_compat.__version__}"
    return [
        PoolSpec("pgpool", name, _pgpool_opener({})),
        PoolSpec(
            "pgpool_factory",
            f"{name} ConnectionPool (factory)",
            _open_factory_pool,
            frozenset({"overhead", "query"}),
        ),
        PoolSpec(
            "pgpool_nocheck",
            f"{name} pool_check=None",
            _pgpool_opener({"pool_check": None}),
            frozenset({"overhead", "query"}),
        ),
        PoolSpec("pgpool_production", f"{name} production", _pgpool_opener(PRODUCTION_OPTIONS)),
    ]
