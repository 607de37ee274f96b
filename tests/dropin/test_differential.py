"""Differential suite: random valid call sequences, psycopg2.pool vs pgpool_compat, in lockstep.

Each sequence builds one stock pool and one of ours with the same arguments on the same server,
then applies the same calls to both. After every call it compares the outcome (the value, or the
exception's type and message) and everything a user can observe: the pool's attributes and
bookkeeping and every connection's ``closed`` flag, transaction status and autocommit. The two
pools hold different connection objects, so connections are compared by label: the order in
which each side first saw them. The first difference fails the test with the seed and the trace.

Only valid calls are generated. Calls whose stock result is a bug we fix on purpose (an explicit
key that does not match the connection, a rollback that fails, ``putconn(None, key)``) are left
out here and proved in test_bugfixes.py. Stock quirks that are valid calls stay in: int keys that
collide with automatic keys, double puts, foreign connections, calls after ``closeall``.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import psycopg2
import psycopg2.extensions
import psycopg2.pool
import pytest

import pgpool_compat

pytestmark = pytest.mark.timeout(120)

#: Sequences per pool class; hundreds by default, raise it to explore.
SEQUENCES = int(os.environ.get("PGPOOL_DIFF_SEQUENCES", "200"))
#: Added to every seed, to explore other sequences without editing the test.
SEED_BASE = int(os.environ.get("PGPOOL_DIFF_SEED", "0"))
STEPS = 28
#: Calls made after closeall: enough to see every call fail the same way, no more.
STEPS_AFTER_CLOSEALL = 4

Label = Union[int, str]
Outcome = Tuple[Any, ...]
Op = Tuple[Any, ...]

# SQL a borrower may run before returning a connection: each leaves it in a different state.
DIRTY_SQL = {
    "begin": "SELECT 1",  # implicit transaction: INTRANS
    "fail": "SELECT 1/0",  # failed statement: INERROR
    "explicit_begin": "BEGIN",  # under autocommit: INTRANS that psycopg2's rollback() skips
    "set": "SET application_name = 'pgpool_compat_diff'",
}


def _outcome(call: Callable[[], Any], label: Callable[[Any], Label]) -> Outcome:
    """Run a call and describe its result so two sides can be compared."""
    try:
        value = call()
    except Exception as error:  # any exception is an outcome to compare, not a test error
        return ("raise", f"{type(error).__module__}.{type(error).__qualname__}", str(error))
    if value is None:
        return ("ok", None)
    return ("ok", label(value))


def _conn_state(conn: Any) -> Tuple[Any, ...]:
    closed = conn.closed
    if closed:
        return (closed,)
    return (closed, conn.info.transaction_status, conn.autocommit)


class Side:
    """One pool under test, the connections it handed out, and a foreign connection."""

    def __init__(self, pool_cls: type, dsn: str, args: Tuple[Any, ...], kwargs: Dict[str, Any]):
        self.conns: List[Any] = []  # label -> connection; holding them keeps id() unique
        self.ids: Dict[int, int] = {}
        self.foreign = psycopg2.connect(dsn)
        self.pool: Any = None
        self.init_outcome = _outcome(lambda: self._build(pool_cls, args, kwargs), self.label)

    def _build(self, pool_cls: type, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        self.pool = pool_cls(*args, **kwargs)

    def label(self, conn: Any) -> Label:
        if conn is self.foreign:
            return "foreign"
        if id(conn) not in self.ids:
            self.ids[id(conn)] = len(self.conns)
            self.conns.append(conn)
        return self.ids[id(conn)]

    def snapshot(self) -> Dict[str, Any]:
        pool = self.pool
        # _pool first: idle connections created by __init__ get labels in list order.
        idle = [self.label(conn) for conn in pool._pool]
        used = {repr(key): self.label(conn) for key, conn in pool._used.items()}
        rused = {self.ids.get(conn_id, "?"): repr(key) for conn_id, key in pool._rused.items()}
        return {
            "closed": pool.closed,
            "minconn": pool.minconn,
            "maxconn": pool.maxconn,
            "_keys": pool._keys,
            "_pool": idle,
            "_used": used,
            "_rused": rused,
            "conns": [_conn_state(conn) for conn in self.conns],
            "foreign": _conn_state(self.foreign),
        }

    def apply(self, op: Op) -> Outcome:
        kind = op[0]
        pool = self.pool
        if kind == "getconn":
            key = op[1]
            if key is None:
                return _outcome(pool.getconn, self.label)
            return _outcome(lambda: pool.getconn(key), self.label)
        if kind == "putconn":
            _, label, key, close = op
            conn = self.foreign if label == "foreign" else self.conns[label]
            kwargs: Dict[str, Any] = {}
            if key is not _AUTO:
                kwargs["key"] = key
            if close:
                kwargs["close"] = True
            return _outcome(lambda: pool.putconn(conn, **kwargs), self.label)
        if kind == "closeall":
            return _outcome(pool.closeall, self.label)
        conn = self.conns[op[1]]
        if kind == "sql":
            return _outcome(lambda: _execute(conn, DIRTY_SQL[op[2]]), self.label)
        if kind == "autocommit":
            return _outcome(lambda: setattr(conn, "autocommit", op[2]), self.label)
        if kind == "close_conn":
            return _outcome(conn.close, self.label)
        raise AssertionError(f"unknown op {op!r}")

    def close(self) -> None:
        for conn in [*self.conns, self.foreign]:
            if not conn.closed:
                conn.close()


def _execute(conn: Any, sql: str) -> None:
    with conn.cursor() as cursor:
        cursor.execute(sql)


class _AutoKey:
    """Marker: call putconn without a key (None is a key value the caller could pass)."""

    def __repr__(self) -> str:
        return "AUTO"


_AUTO = _AutoKey()


@dataclass
class Client:
    """What the application holds: the connections it borrowed, and ones it gave back."""

    borrowed: List[Label] = field(default_factory=list)
    returned: List[Label] = field(default_factory=list)


def _sizes(rng: random.Random) -> Tuple[Any, Any]:
    """minconn <= maxconn, written as ints, numeric strings or floats (int() truncates)."""
    maxconn = rng.randint(1, 4)
    minconn = rng.randint(0, maxconn)

    def written(n: int) -> Any:
        return rng.choice([n, n, str(n), n + rng.choice([0.0, 0.5, 0.9])])

    return written(minconn), written(maxconn)


def _connect_args(rng: random.Random, dsn: str) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
    form = rng.randrange(3)
    if form == 0:
        return (dsn,), {}
    if form == 1:
        return (), {"dsn": dsn}
    return (), dict(psycopg2.extensions.parse_dsn(dsn))


def _next_op(rng: random.Random, ref: Side, client: Client) -> Op:
    """Pick a valid call, judging validity on the stock side (both sides agree so far)."""
    pool = ref.pool
    out = [label for label in dict.fromkeys(client.borrowed) if id(ref.conns[label]) in pool._rused]
    choices: List[Tuple[float, str]] = [
        (3.0, "get_auto"),
        (2.0, "get_str"),
        (1.5, "get_int"),
        (0.3, "put_foreign"),
        (0.12 if not pool.closed else 0.5, "closeall"),
    ]
    if client.borrowed:
        choices.append((4.0, "put"))
    if out:
        choices.append((2.5, "dirty"))
    if client.returned:
        choices.append((0.5, "double_put"))
    name = rng.choices([name for _, name in choices], [weight for weight, _ in choices])[0]
    close = rng.random() < 0.25
    if name == "get_auto":
        return ("getconn", None)
    if name == "get_str":
        return ("getconn", rng.choice(["a", "b", "c"]))
    if name == "get_int":
        return ("getconn", rng.choice([0, 1, 2, 3, 4, 5]))  # 1.. collide with automatic keys
    if name == "put_foreign":
        return ("putconn", "foreign", _AUTO, close)
    if name == "closeall":
        return ("closeall",)
    if name == "put":
        label = client.borrowed.pop(rng.randrange(len(client.borrowed)))
        client.returned.append(label)
        return ("putconn", label, _explicit_key(rng, ref, label), close)
    if name == "double_put":
        return ("putconn", rng.choice(client.returned), _AUTO, close)
    label = rng.choice(out)
    dirty = rng.choice(["sql", "sql", "sql", "autocommit", "close_conn"])
    if dirty == "sql":
        return ("sql", label, rng.choice(sorted(DIRTY_SQL)))
    if dirty == "autocommit":
        return ("autocommit", label, rng.random() < 0.7)
    return ("close_conn", label)


def _explicit_key(rng: random.Random, ref: Side, label: Label) -> Any:
    """The connection's own key, sometimes; never a wrong key (a stock bug, tested elsewhere)."""
    key = ref.pool._rused.get(id(ref.conns[label]), _AUTO)
    if key is _AUTO or rng.random() < 0.6:
        return _AUTO
    return key


def _after_call(op: Op, outcome: Outcome, client: Client) -> None:
    if op[0] == "getconn" and outcome[0] == "ok":
        client.borrowed.append(outcome[1])


def _configure(conn: Any) -> None:
    _execute(conn, "SELECT 1")  # leaves a transaction open: the pool must commit it


def neutral_options(seed: int) -> Dict[str, Any]:
    """Some ``pool_*`` settings that must not change any result here (short, healthy runs)."""
    rng = random.Random(f"options-{seed}")
    candidates: Dict[str, Any] = {
        "pool_name": f"diff-{seed}",
        "pool_check": rng.choice(["socket", None]),
        "pool_max_lifetime": 3600,
        "pool_leak_timeout": 3600,
        "pool_reset": "rollback",
        "pool_lifo": True,
        "pool_configure": _configure,
    }
    return {name: value for name, value in candidates.items() if rng.random() < 0.4}


def run_sequence(
    stock_cls: type,
    ours_cls: type,
    seed: int,
    dsn: str,
    admin_conn: Any,
    ours_options: Optional[Dict[str, Any]] = None,
) -> None:
    """Run sequence ``seed`` on a stock-based pool and on ours, failing at the first difference.

    ``ours_options`` are extra ``pool_*`` keywords for our pool only. test_subclass.py runs
    this on subclasses too, so it takes the two classes. Afterwards no session the two pools
    opened may be left on the server (``admin_conn`` looks).
    """
    rng = random.Random(seed)
    minconn, maxconn = _sizes(rng)
    tag = f"pgpool-diff-{os.getpid()}-{seed}"
    args, kwargs = _connect_args(rng, f"{dsn} application_name={tag}")
    ctor = (minconn, maxconn, *args)
    options = ours_options or {}
    trace: List[str] = [f"{ours_cls.__name__}{ctor!r} {kwargs!r} ours also {options!r}"]
    stock = Side(stock_cls, dsn, ctor, kwargs)
    ours: Optional[Side] = None
    try:
        ours = Side(ours_cls, dsn, ctor, {**kwargs, **options})
        assert ours.init_outcome == stock.init_outcome == ("ok", None), trace
        assert (ours.pool._args, ours.pool._kwargs) == (stock.pool._args, stock.pool._kwargs)
        _compare(stock, ours, trace, seed)
        client = Client()
        steps_left = STEPS
        while steps_left > 0:
            steps_left -= 1
            if stock.pool.closed:
                steps_left = min(steps_left, STEPS_AFTER_CLOSEALL)
            op = _next_op(rng, stock, client)
            trace.append(repr(op))
            expected = stock.apply(op)
            got = ours.apply(op)
            trace.append(f"  -> {expected!r}")
            assert got == expected, _report(seed, trace, expected, got)
            _after_call(op, expected, client)
            _compare(stock, ours, trace, seed)
    finally:
        stock.close()
        if ours is not None:
            ours.close()
    assert _sessions_left(admin_conn, tag) == 0, f"seed {seed}: a connection outlived its pool"


def _sessions_left(admin_conn: Any, application_name: str) -> int:
    """Sessions still open under this name once closed ones had 5 s to exit (async)."""
    deadline = time.monotonic() + 5
    with admin_conn.cursor() as cursor:
        while True:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (application_name,),
            )
            left: int = cursor.fetchone()[0]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.005)


def _compare(stock: Side, ours: Side, trace: List[str], seed: int) -> None:
    expected = stock.snapshot()
    got = ours.snapshot()
    assert got == expected, _report(seed, trace, expected, got)


def _report(seed: int, trace: List[str], expected: Any, got: Any) -> str:
    steps = "\n".join(trace[-40:])
    return (
        f"seed {seed}: pgpool_compat differs from psycopg2.pool after:\n{steps}\n"
        f"stock: {expected!r}\nours:  {got!r}"
    )


@pytest.mark.own_session
@pytest.mark.parametrize("seed", range(SEED_BASE, SEED_BASE + SEQUENCES))
@pytest.mark.parametrize("pool_name", ["SimpleConnectionPool", "ThreadedConnectionPool"])
def test_random_sequence_matches_stock(
    pool_name: str, seed: int, pg_dsn: str, admin_conn: Any
) -> None:
    stock_cls = getattr(psycopg2.pool, pool_name)
    ours_cls = getattr(pgpool_compat, pool_name)
    run_sequence(stock_cls, ours_cls, seed, pg_dsn, admin_conn, neutral_options(seed))
