"""Validation of the ``pool_*`` keywords, before any connection is opened.

Every keyword of issue 3 is accepted at a valid value and refused, naming itself, at a wrong
type or an out-of-range value; an unknown ``pool_*`` name is a ``TypeError`` that lists the
known ones; everything else goes to ``psycopg2.connect`` untouched; the settings are frozen.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, List

import psycopg2
import pytest

import pgpool_compat

pytestmark = pytest.mark.timeout(60)

CLASSES = ("SimpleConnectionPool", "ThreadedConnectionPool")

#: The keywords issue 3 asks for, written out so that a missing one fails here.
EXPECTED_OPTIONS = (
    "pool_timeout",
    "pool_max_idle",
    "pool_max_lifetime",
    "pool_check",
    "pool_ping_after",
    "pool_check_timeout",
    "pool_reset",
    "pool_configure",
    "pool_name",
    "pool_leak_timeout",
    "pool_background",
    "pool_lifo",
)

ONE_YEAR = 365 * 24 * 3600.0

#: One valid, non-default value per keyword: each must be accepted by ThreadedConnectionPool.
VALID: Dict[str, Any] = {
    "pool_timeout": 0,  # "do not wait"
    "pool_max_idle": 30,
    "pool_max_lifetime": ONE_YEAR,  # the longest allowed
    "pool_check": "ping",
    "pool_ping_after": 0,  # ping on every checkout
    "pool_check_timeout": 0.5,
    "pool_reset": "discard",
    "pool_configure": lambda conn: None,
    "pool_name": "orders",
    "pool_leak_timeout": 60,
    "pool_background": False,
    "pool_lifo": False,
}

#: (keyword, value, error type): wrong types and out-of-range values.
INVALID = [
    # durations: not a number
    *[(name, "5", TypeError) for name in (
        "pool_timeout", "pool_max_idle", "pool_max_lifetime", "pool_ping_after",
        "pool_check_timeout", "pool_leak_timeout")],
    *[(name, True, TypeError) for name in (  # a bool is not a number of seconds
        "pool_timeout", "pool_max_idle", "pool_max_lifetime", "pool_leak_timeout")],
    ("pool_ping_after", None, TypeError),
    ("pool_check_timeout", None, TypeError),
    # durations: out of range
    ("pool_timeout", -0.1, ValueError),
    ("pool_timeout", math.nan, ValueError),
    ("pool_timeout", math.inf, ValueError),
    ("pool_timeout", ONE_YEAR + 1, ValueError),
    ("pool_max_idle", 0, ValueError),
    ("pool_max_idle", -1, ValueError),
    ("pool_max_lifetime", 0, ValueError),
    ("pool_max_lifetime", math.inf, ValueError),
    ("pool_leak_timeout", 0, ValueError),
    ("pool_ping_after", -1, ValueError),
    ("pool_check_timeout", 0, ValueError),
    ("pool_check_timeout", -5, ValueError),
    # modes
    ("pool_check", "sometimes", ValueError),
    ("pool_check", "SOCKET", ValueError),
    ("pool_check", 1, ValueError),
    ("pool_reset", "none", ValueError),
    ("pool_reset", None, ValueError),
    # callables, names, flags
    ("pool_configure", "SET search_path TO app", TypeError),
    ("pool_name", 7, TypeError),
    ("pool_background", "yes", TypeError),
    ("pool_background", 1, TypeError),
    ("pool_lifo", 0, TypeError),
    ("pool_lifo", None, TypeError),
]


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> List[Any]:
    """Records every ``psycopg2.connect`` call (and still connects for real)."""
    calls: List[Any] = []
    real: Callable[..., Any] = psycopg2.connect

    def recording(*args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(psycopg2, "connect", recording)
    return calls


@pytest.mark.parametrize("cls", CLASSES)
def test_unknown_keyword_lists_every_known_option(
    cls: str, pg_dsn: str, connects: List[Any]
) -> None:
    with pytest.raises(TypeError) as info:
        getattr(pgpool_compat, cls)(1, 2, pg_dsn, pool_max_life=60)
    message = str(info.value)
    assert "'pool_max_life'" in message
    for name in EXPECTED_OPTIONS:
        assert name in message, f"{name} missing from: {message}"
    assert connects == []


@pytest.mark.parametrize(("keyword", "value", "error"), INVALID)
def test_bad_value_is_refused_naming_the_keyword(
    keyword: str, value: Any, error: type, pg_dsn: str, connects: List[Any]
) -> None:
    with pytest.raises(error) as info:
        pgpool_compat.ThreadedConnectionPool(1, 2, pg_dsn, **{keyword: value})
    assert type(info.value) is error
    assert keyword in str(info.value)
    assert connects == []  # refused before opening anything


@pytest.mark.parametrize("cls", CLASSES)
def test_every_option_accepted_at_a_valid_value(
    cls: str, pg_dsn: str, pools: List[Any]
) -> None:
    valid = dict(VALID)
    if cls == "SimpleConnectionPool":
        del valid["pool_timeout"]
    pool = getattr(pgpool_compat, cls)(1, 2, pg_dsn, **valid)
    pools.append(pool)
    options = pool._options
    assert options.max_idle == 30.0 and options.max_lifetime == ONE_YEAR
    assert options.check == "ping" and options.ping_after == 0.0
    assert options.reset == "discard" and options.name == "orders" and options.lifo is False
    if cls == "ThreadedConnectionPool":
        assert options.timeout == 0.0
    conn = pool.getconn()
    pool.putconn(conn)


def test_all_expected_keywords_exist_and_no_others() -> None:
    from pgpool_compat.settings import OPTION_NAMES

    assert set(OPTION_NAMES) == set(EXPECTED_OPTIONS)


def test_defaults_keep_psycopg2_behaviour(pg_dsn: str, pools: List[Any]) -> None:
    pool = pgpool_compat.ThreadedConnectionPool(1, 1, pg_dsn)
    pools.append(pool)
    options = pool._options
    assert (options.timeout, options.max_idle, options.max_lifetime) == (None, None, None)
    assert (options.check, options.ping_after, options.check_timeout) == ("socket", 1.0, 5.0)
    assert (options.reset, options.configure, options.name) == ("rollback", None, None)
    assert (options.leak_timeout, options.background, options.lifo) == (None, False, True)
    pool.getconn()
    with pytest.raises(pgpool_compat.PoolError, match=r"^connection pool exhausted$"):
        pool.getconn()  # no pool_timeout: fails at once, as psycopg2.pool


def test_simple_pool_rejects_pool_timeout_with_advice(pg_dsn: str, connects: List[Any]) -> None:
    with pytest.raises(TypeError) as info:
        pgpool_compat.SimpleConnectionPool(1, 2, pg_dsn, pool_timeout=0)  # even 0
    assert "pool_timeout" in str(info.value)
    assert "ThreadedConnectionPool" in str(info.value)
    assert connects == []


def test_simple_pool_accepts_pool_timeout_none(pg_dsn: str, pools: List[Any]) -> None:
    pool = pgpool_compat.SimpleConnectionPool(0, 1, pg_dsn, pool_timeout=None)
    pools.append(pool)
    pool.putconn(pool.getconn())


def test_other_keywords_reach_psycopg2_connect(
    pg_dsn: str, connects: List[Any], pools: List[Any]
) -> None:
    pool = pgpool_compat.ThreadedConnectionPool(
        1, 1, pg_dsn, application_name="opts-passthrough", pool_name="passthrough"
    )
    pools.append(pool)
    assert len(connects) == 1
    args, kwargs = connects[0]
    assert args == (pg_dsn,)
    assert kwargs == {"application_name": "opts-passthrough"}  # no pool_* keyword leaks
    conn = pool.getconn()
    with conn.cursor() as cursor:
        cursor.execute("SHOW application_name")
        assert cursor.fetchone()[0] == "opts-passthrough"
    pool.putconn(conn)


def test_options_are_frozen_and_normalised(pg_dsn: str, pools: List[Any]) -> None:
    given = {"pool_timeout": 2, "pool_max_idle": 3}
    pool = pgpool_compat.ThreadedConnectionPool(0, 1, pg_dsn, **given)
    pools.append(pool)
    options = pool._options
    assert options.timeout == 2.0 and isinstance(options.timeout, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.timeout = None
    given["pool_timeout"] = 0  # the caller's dict is not the pool's
    assert pool._options.timeout == 2.0
