"""Bad input: every public method fed wrong types, unknown keys, foreign connections,
connections of another pool, double returns, returns after ``closeall``, absurd sizes and
timeouts, unknown ``pool_*`` names. Each must raise a clear error (PoolError, TypeError or
ValueError, with a message) and leave the pool's books exactly as they were."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

import psycopg2
import psycopg2.pool
import pytest

from tests.helpers import backend_count

from .support import make_pool

pytestmark = pytest.mark.timeout(60)

PoolError = psycopg2.pool.PoolError
CLEAR = (PoolError, TypeError, ValueError)


@dataclass
class Ctx:
    pool: Any
    borrowed: Any
    foreign: Any
    other_pool: Any
    other_conn: Any


@dataclass
class Case:
    name: str
    action: Callable[[Ctx], Any]
    expected: Tuple[Type[BaseException], ...] = CLEAR
    prepare: Optional[Callable[[Ctx], Any]] = None
    ours_only: bool = False


def close_pool(ctx: Ctx) -> None:
    ctx.pool.closeall()


def return_borrowed(ctx: Ctx) -> None:
    ctx.pool.putconn(ctx.borrowed)


CASES = [
    Case("getconn(unhashable key)", lambda c: c.pool.getconn([]), (TypeError,)),
    Case("putconn(foreign connection)", lambda c: c.pool.putconn(c.foreign), (PoolError,)),
    Case(
        "putconn(another pool's connection)", lambda c: c.pool.putconn(c.other_conn), (PoolError,)
    ),
    Case("putconn(not a connection)", lambda c: c.pool.putconn("conn")),
    Case("putconn() with no connection", lambda c: c.pool.putconn()),
    Case("putconn(conn, wrong key)", lambda c: c.pool.putconn(c.borrowed, "nope")),
    Case("putconn(conn, unhashable key)", lambda c: c.pool.putconn(c.borrowed, [])),
    Case(
        "putconn twice", lambda c: c.pool.putconn(c.borrowed), (PoolError,), prepare=return_borrowed
    ),
    Case(
        "putconn after closeall",
        lambda c: c.pool.putconn(c.borrowed),
        (PoolError,),
        prepare=close_pool,
    ),
    Case("getconn after closeall", lambda c: c.pool.getconn(), (PoolError,), prepare=close_pool),
    Case("closeall twice", lambda c: c.pool.closeall(), (PoolError,), prepare=close_pool),
    Case(
        "connection(unhashable key)",
        lambda c: c.pool.connection([]).__enter__(),
        (TypeError,),
        ours_only=True,
    ),
    Case(
        "connection() after closeall",
        lambda c: c.pool.connection().__enter__(),
        (PoolError,),
        prepare=close_pool,
        ours_only=True,
    ),
    Case(
        "check() after closeall",
        lambda c: c.pool.check(),
        (PoolError,),
        prepare=close_pool,
        ours_only=True,
    ),
]


def books(pool: Any) -> Dict[str, Any]:
    """Everything the pool keeps account of, by identity."""
    snapshot = {
        "idle": [id(conn) for conn in pool._pool],
        "used": {repr(key): id(conn) for key, conn in pool._used.items()},
        "rused": dict(pool._rused),
        "closed": pool.closed,
    }
    if hasattr(pool, "get_stats"):
        stats = pool.get_stats()
        snapshot["gauges"] = {k: stats[k] for k in ("pool_size", "pool_available")}
    return snapshot


def clear(error: Optional[BaseException], expected: Tuple[Type[BaseException], ...]) -> bool:
    return error is not None and isinstance(error, expected) and bool(str(error).strip())


def run_case(impl: str, case: Case, dsn: str) -> Tuple[Optional[BaseException], bool]:
    """Run one bad call on a fresh pool; return the error and whether the books changed."""
    pool = make_pool(impl, 1, 3, dsn)
    other = make_pool(impl, 1, 1, dsn)
    foreign = psycopg2.connect(dsn)
    try:
        ctx = Ctx(pool, pool.getconn(), foreign, other, other.getconn())
        if case.prepare is not None:
            case.prepare(ctx)
        before = books(pool)
        error: Optional[BaseException] = None
        try:
            case.action(ctx)
        except Exception as exc:
            error = exc
        changed = books(pool) != before
        if not pool.closed:  # the pool still works after the bad call
            conn = pool.getconn()
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            pool.putconn(conn)
        return error, changed
    finally:
        foreign.close()
        for each in (pool, other):
            if not each.closed:
                each.closeall()


def describe(error: Optional[BaseException]) -> str:
    return "no error" if error is None else f"{type(error).__name__}: {error}"


def test_bad_calls(impl: str, record: Any, pg_dsn: str) -> None:
    unclear: List[str] = []
    changed_books: List[str] = []
    cases = [case for case in CASES if impl == "pgpool_compat" or not case.ours_only]
    for case in cases:
        error, changed = run_case(impl, case, pg_dsn)
        if not clear(error, case.expected):
            unclear.append(f"{case.name} -> {describe(error)}")
        if changed:
            changed_books.append(case.name)
    record(
        "bad-input",
        "Bad calls: wrong types, foreign/other pool's connections, double returns, wrong keys, "
        "use after closeall",
        {
            "calls tried": len(cases),
            "without a clear error": "; ".join(unclear) or "none",
            "books changed by a failed call": "; ".join(changed_books) or "none",
        },
    )
    if impl == "pgpool_compat":
        assert not unclear, unclear
        assert not changed_books, changed_books


SIZES: List[Tuple[str, Tuple[Any, Any]]] = [
    ("minconn='abc'", ("abc", 2)),
    ("maxconn=None", (1, None)),
    ("minconn > maxconn", (3, 1)),
    ("minconn < 0", (-1, 2)),
    ("maxconn=0", (0, 0)),
    ("maxconn=10**9", (1, 10**9)),
]

OPTIONS: List[Tuple[str, Dict[str, Any]]] = [
    ("pool_timeout", {"pool_timeout": -1}),
    ("pool_timeout", {"pool_timeout": "soon"}),
    ("pool_timeout", {"pool_timeout": math.nan}),
    ("pool_timeout", {"pool_timeout": 1e12}),
    ("pool_max_idle", {"pool_max_idle": 0}),
    ("pool_max_lifetime", {"pool_max_lifetime": -5}),
    ("pool_check", {"pool_check": "pong"}),
    ("pool_check_timeout", {"pool_check_timeout": 0}),
    ("pool_reset", {"pool_reset": 42}),
    ("pool_configure", {"pool_configure": "SET x"}),
    ("pool_name", {"pool_name": 3}),
    ("pool_background", {"pool_background": "yes"}),
    ("pool_lifo", {"pool_lifo": 1}),
    ("pool_tiemout", {"pool_tiemout": 5}),
]


def test_absurd_sizes(impl: str, record: Any, pg_dsn: str) -> None:
    """Sizes stock silently accepts (and then misbehaves with) get a clear ValueError, and a
    rejected constructor leaves no connection open on the server."""
    accepted: List[str] = []
    opened_before = backend_count(pg_dsn)
    for name, (low, high) in SIZES:
        try:
            make_pool(impl, low, high, pg_dsn).closeall()
        except (TypeError, ValueError) as exc:
            assert str(exc).strip()
            continue
        accepted.append(name)
    leaked = backend_count(pg_dsn) - opened_before
    record(
        "bad-sizes",
        "Absurd pool sizes (minconn > maxconn, negative, 0, 10**9, non-numbers)",
        {
            "accepted without error": ", ".join(accepted) or "none",
            "connections left open by rejected constructors": leaked,
        },
    )
    assert leaked == 0
    if impl == "pgpool_compat":
        assert not accepted


@pytest.mark.parametrize("keyword,kwargs", OPTIONS, ids=[str(kw) for _, kw in OPTIONS])
def test_bad_option_values(keyword: str, kwargs: Dict[str, Any], pg_dsn: str) -> None:
    """Every bad ``pool_*`` value or name: TypeError/ValueError naming the keyword, before any
    connection is opened."""
    import pgpool_compat

    if not hasattr(pgpool_compat, "ThreadedConnectionPool"):
        pytest.skip("pgpool_compat.ThreadedConnectionPool is not there yet")
    opened_before = backend_count(pg_dsn)
    with pytest.raises((TypeError, ValueError)) as caught:
        pgpool_compat.ThreadedConnectionPool(2, 3, pg_dsn, **kwargs)
    assert keyword in str(caught.value)
    assert backend_count(pg_dsn) == opened_before


def test_simple_pool_rejects_timeout(pg_dsn: str) -> None:
    import pgpool_compat

    if not hasattr(pgpool_compat, "SimpleConnectionPool"):
        pytest.skip("pgpool_compat.SimpleConnectionPool is not there yet")
    with pytest.raises(TypeError, match="pool_timeout"):
        pgpool_compat.SimpleConnectionPool(1, 2, pg_dsn, pool_timeout=1)
