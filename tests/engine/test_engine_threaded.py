"""The threaded runner: its verbs, waiting, errors, keeper, observer and registry.

Factory-driver tests pool plain objects (the runner pools anything); the psycopg2-driver
tests talk to the real test server.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Dict, Iterator, List

import psycopg2
import pytest

from pgpool_compat.driver import FactoryDriver, Psycopg2Driver
from pgpool_compat.engine.stats import live_runners
from pgpool_compat.engine.threaded import ThreadedRunner, _Keeper
from pgpool_compat.errors import (
    DuplicateConnection,
    NotBorrowed,
    PoolClosed,
    PoolError,
    PoolTimeout,
)
from pgpool_compat.settings import Labels, PoolOptions, Settings
from tests.helpers import pid_of, scalar, terminate_backends


class Resource:
    __slots__ = ("closed", "n")

    def __init__(self, n: int) -> None:
        self.n = n
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Factory:
    def __init__(self) -> None:
        self.made: List[Resource] = []
        self.lock = threading.Lock()

    def __call__(self) -> Resource:
        with self.lock:
            resource = Resource(len(self.made))
            self.made.append(resource)
            return resource


@pytest.fixture
def runners() -> Iterator[List[ThreadedRunner[Any]]]:
    made: List[ThreadedRunner[Any]] = []
    yield made
    for runner in made:
        runner.close()


def factory_runner(
    runners: List[ThreadedRunner[Any]], factory: Any = None, **settings: Any
) -> ThreadedRunner[Any]:
    settings.setdefault("max_size", 2)
    runner: ThreadedRunner[Any] = ThreadedRunner(
        Settings(**settings), FactoryDriver(factory or Factory()), kind="test"
    )
    runners.append(runner)
    return runner


def test_acquire_reuses_and_release_keeps(runners: List[ThreadedRunner[Any]]) -> None:
    factory = Factory()
    runner = factory_runner(runners, factory)
    first = runner.acquire()
    runner.release(first)
    assert runner.acquire() is first and len(factory.made) == 1


def test_timeout_zero_fails_at_once_in_the_faces_words(
    runners: List[ThreadedRunner[Any]],
) -> None:
    runner = factory_runner(
        runners, max_size=1, timeout=0, labels=Labels(timeout="wait", max_size="cap")
    )
    runner.acquire()
    started = time.monotonic()
    with pytest.raises(PoolTimeout, match=r"exhausted.*\(wait=0, cap=1, 0 other"):
        runner.acquire()
    assert time.monotonic() - started < 0.5
    assert runner.figures().timeouts == 1 and runner.stats()["requests_errors"] == 1


@pytest.mark.parametrize("reentrant", [False, True])
def test_a_return_being_reset_is_waited_for_at_timeout_zero_by_the_psycopg2_face_only(
    runners: List[ThreadedRunner[Any]], reentrant: bool
) -> None:
    """psycopg2.pool holds its lock through the rollback, so its face (the reentrant
    runner) serves a caller arriving mid-reset; every other face fails at its deadline."""
    resetting, finish = threading.Event(), threading.Event()

    def reset(conn: Resource) -> None:
        resetting.set()
        assert finish.wait(10)

    runner: ThreadedRunner[Any] = ThreadedRunner(
        Settings(max_size=1, timeout=0), FactoryDriver(Factory(), reset=reset),
        reentrant=reentrant,
    )  # fmt: skip
    runners.append(runner)
    held = runner.acquire()
    returning = threading.Thread(target=runner.release, args=(held,), daemon=True)
    returning.start()
    try:
        assert resetting.wait(5)
        if reentrant:
            threading.Timer(0.2, finish.set).start()
            assert runner.acquire() is held
        else:
            started = time.monotonic()
            with pytest.raises(PoolTimeout):
                runner.acquire()
            assert time.monotonic() - started < 0.5
    finally:
        finish.set()
        returning.join(5)
    assert not returning.is_alive()


def test_timeout_none_waits_for_ever_not_one_year(runners: List[ThreadedRunner[Any]]) -> None:
    runner = factory_runner(runners, max_size=1, timeout=None)
    held = runner.acquire()
    threading.Timer(0.3, runner.release, (held,)).start()
    assert runner.acquire() is held  # waited, no timeout computed from a huge number


def test_waiters_are_served_first_come_first_served(runners: List[ThreadedRunner[Any]]) -> None:
    runner = factory_runner(runners, max_size=1, timeout=5)
    held = runner.acquire()
    order: List[int] = []

    def borrower(n: int) -> None:
        conn = runner.acquire()
        order.append(n)
        runner.release(conn)

    threads = []
    for n in range(4):
        thread = threading.Thread(target=borrower, args=(n,))
        thread.start()
        threads.append(thread)
        deadline = time.monotonic() + 2
        while runner.figures().pending < n + 1 and time.monotonic() < deadline:
            time.sleep(0.005)
    runner.release(held)
    for thread in threads:
        thread.join(5)
    assert order == [0, 1, 2, 3]


def test_timed_out_waiter_leaves_no_ghost(runners: List[ThreadedRunner[Any]]) -> None:
    runner = factory_runner(runners, max_size=1, timeout=0.1)
    held = runner.acquire()
    with pytest.raises(PoolTimeout):
        runner.acquire()
    runner.release(held)
    figures = runner.figures()
    assert figures.pending == 0 and figures.idle == 1 and figures.size == 1


def test_same_object_twice_is_refused_and_the_slot_freed(
    runners: List[ThreadedRunner[Any]],
) -> None:
    shared = Resource(0)
    runner = factory_runner(runners, lambda: shared, max_size=2, timeout=0)
    assert runner.acquire() is shared
    with pytest.raises(DuplicateConnection):
        runner.acquire()
    assert not shared.closed  # someone else's: never closed
    assert runner.figures().size == 1


def test_release_of_a_stranger_or_twice(runners: List[ThreadedRunner[Any]]) -> None:
    runner = factory_runner(runners)
    conn = runner.acquire()
    with pytest.raises(NotBorrowed):
        runner.release(Resource(99))
    runner.release(conn)
    with pytest.raises(NotBorrowed):
        runner.release(conn)
    assert runner.figures().size == 1


def test_discard_closes_and_frees_the_slot(runners: List[ThreadedRunner[Any]]) -> None:
    runner = factory_runner(runners, max_size=1, timeout=0)
    conn = runner.acquire()
    runner.release(conn, discard=True)
    assert conn.closed and runner.acquire() is not conn


def test_close_fails_waiters_and_closes_borrowed(runners: List[ThreadedRunner[Any]]) -> None:
    runner = factory_runner(runners, max_size=1, timeout=5)
    conn = runner.acquire()
    errors: List[BaseException] = []

    def waiter() -> None:
        try:
            runner.acquire()
        except PoolError as error:
            errors.append(error)

    thread = threading.Thread(target=waiter)
    thread.start()
    deadline = time.monotonic() + 2
    while runner.figures().pending < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    runner.close()
    thread.join(5)
    assert isinstance(errors[0], PoolClosed) and conn.closed
    runner.close()  # idempotent
    with pytest.raises(PoolClosed):
        runner.release(conn)
    with pytest.raises(PoolClosed):
        runner.acquire()


def test_close_without_borrowed_closes_them_on_return(runners: List[ThreadedRunner[Any]]) -> None:
    runner = factory_runner(runners)
    idle, borrowed = runner.acquire(), runner.acquire()
    runner.release(idle)
    runner.close(close_borrowed=False)
    assert idle.closed and not borrowed.closed
    runner.release(borrowed)
    assert borrowed.closed


def test_prefill_and_check(runners: List[ThreadedRunner[Any]]) -> None:
    runner = factory_runner(runners, min_size=2, max_size=3, check=lambda conn: conn.n != 0)
    assert runner.prefill() == 2 and runner.prefill() == 0
    assert runner.check() == 1  # resource 0 fails the check
    assert runner.figures().idle == 1


class RaisingProbeDriver(FactoryDriver[Resource]):
    """A driver whose zero-round-trip probe raises while ``failing`` (a face's user hook,
    such as generic-connection-pool's ``check_aliveness``)."""

    failing = False

    def is_alive(self, conn: Resource, state: Any) -> bool:
        if self.failing:
            raise OSError("network glitch")
        return True


def test_a_probe_that_raises_counts_as_dead_and_loses_no_slot(
    runners: List[ThreadedRunner[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    driver = RaisingProbeDriver(Factory())
    runner: ThreadedRunner[Any] = ThreadedRunner(Settings(name="probe", max_size=1), driver)
    runners.append(runner)
    first = runner.acquire()
    runner.release(first)
    driver.failing = True
    with caplog.at_level(logging.INFO, logger="pgpool_compat"):
        second = runner.acquire(timeout=0.5)  # the probe raised: a new one, not an error
    assert second is not first and first.closed
    assert "probe: check raised OSError" in caplog.text
    driver.failing = False
    runner.release(second)
    assert runner.figures().size == 1 and runner.acquire(timeout=0.5) is second


def test_reset_failure_discards_and_logs_the_pool_name(
    runners: List[ThreadedRunner[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    def reset(conn: Resource) -> None:
        raise RuntimeError("password=secret")

    runner: ThreadedRunner[Any] = ThreadedRunner(
        Settings(name="books", max_size=1), FactoryDriver(Factory(), reset=reset)
    )
    runners.append(runner)
    conn = runner.acquire()
    with caplog.at_level(logging.WARNING, logger="pgpool_compat"):
        runner.release(conn)
    assert conn.closed and runner.figures().size == 0
    assert caplog.records[-1].getMessage().startswith("books: reset of a returned connection")
    assert "secret" not in caplog.text


def test_keeper_refills_with_backoff_after_failures(runners: List[ThreadedRunner[Any]]) -> None:
    attempts: List[float] = []
    factory = Factory()

    def flaky() -> Resource:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise OSError("down")
        return factory()

    runner = factory_runner(runners, flaky, min_size=1, max_size=1, background=True)
    deadline = time.monotonic() + 5
    while runner.figures().idle < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert runner.figures().idle == 1 and len(attempts) == 3
    pauses = [_Keeper.backoff(n) for n in range(1, 40)]
    assert max(pauses) <= _Keeper.MAX_BACKOFF and min(pauses) > 0


def test_keeper_trims_idle_past_max_idle(runners: List[ThreadedRunner[Any]]) -> None:
    runner = factory_runner(runners, max_size=2, max_idle=0.2, background=True)
    first, second = runner.acquire(), runner.acquire()
    runner.release(first)
    runner.release(second)
    deadline = time.monotonic() + 5
    while runner.figures().size and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runner.figures().size == 0 and first.closed and second.closed


def test_observer_hears_create_wait_and_use(runners: List[ThreadedRunner[Any]]) -> None:
    heard: List[Any] = []

    class Recorder:
        def created(self, pool_name: str, seconds: float) -> None:
            heard.append(("created", pool_name, seconds))

        def waited(self, pool_name: str, seconds: float) -> None:
            heard.append(("waited", pool_name, seconds))

        def used(self, pool_name: str, seconds: float) -> None:
            heard.append(("used", pool_name, seconds))

    runner = factory_runner(runners, name="obs", max_size=1, timeout=5)
    runner.observer = Recorder()
    conn = runner.acquire()
    threading.Timer(0.1, runner.release, (conn,)).start()
    runner.release(runner.acquire())
    kinds = [kind for kind, name, _ in heard if name == "obs"]
    assert kinds[0] == "created" and "waited" in kinds and kinds.count("used") == 2
    assert all(seconds >= 0 for _, _, seconds in heard)


def test_registry_lists_live_runners_only(runners: List[ThreadedRunner[Any]]) -> None:
    runner = factory_runner(runners)
    assert runner in live_runners()
    runner.close()
    assert runner not in live_runners()


def test_keyed_sub_pools_share_a_total_cap(runners: List[ThreadedRunner[Any]]) -> None:
    runner = factory_runner(runners, max_size=1, total_max_size=2, timeout=0)
    a, b = runner.acquire("a"), runner.acquire("b")
    with pytest.raises(PoolTimeout):
        runner.acquire("c")  # total cap, nothing idle
    runner.release(a)
    c = runner.acquire("c")  # a's idle connection evicted to make room
    assert a.closed and c is not a
    with pytest.raises(PoolTimeout):
        runner.acquire("b")  # per-key cap
    runner.release(b)
    assert runner.acquire("b") is b


# -- the psycopg2 driver on the real server --------------------------------------------------


def psycopg2_runner(runners: List[ThreadedRunner[Any]], dsn: str, **settings: Any) -> Any:
    settings.setdefault("max_size", 2)
    runner: ThreadedRunner[Any] = ThreadedRunner(
        Settings(**settings), Psycopg2Driver((dsn,), {}, PoolOptions())
    )
    runners.append(runner)
    return runner


def test_psycopg2_rollback_on_return(runners: List[ThreadedRunner[Any]], pg_dsn: str) -> None:
    runner = psycopg2_runner(runners, pg_dsn)
    conn = runner.acquire()
    scalar(conn, "SELECT 1")  # opens a transaction
    runner.release(conn)
    again = runner.acquire()
    assert again is conn
    assert again.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE


def test_psycopg2_dead_connection_is_never_handed_out(
    runners: List[ThreadedRunner[Any]], pg_dsn: str
) -> None:
    runner = psycopg2_runner(runners, pg_dsn)
    conn = runner.acquire()
    pid = pid_of(conn)
    runner.release(conn)
    terminate_backends(pg_dsn, [pid])
    fresh = runner.acquire()
    assert fresh is not conn and scalar(fresh, "SELECT 1") == 1
    assert runner.stats()["connections_lost"] == 1


def test_close_idle_keeps_the_pool_open_and_borrowed_untouched(
    runners: List[ThreadedRunner[Any]],
) -> None:
    runner = factory_runner(runners, max_size=3)
    idle, borrowed = runner.acquire(), runner.acquire()
    runner.release(idle)
    assert runner.close_idle() == 1
    assert idle.closed and not borrowed.closed and not runner.closed
    assert runner.figures().size == 1
    runner.release(borrowed)
    assert runner.acquire() is borrowed


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_forked_child_starts_from_empty_books_and_never_closes_the_parents(
    runners: List[ThreadedRunner[Any]],
) -> None:
    runner = factory_runner(runners, max_size=2, timeout=0)
    borrowed, idle = runner.acquire(), runner.acquire()
    runner.release(idle)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave at once
        try:
            runner.release(borrowed)  # the parent's: forgotten, not closed, no error
            fresh = runner.acquire()
            report = f"{borrowed.closed} {idle.closed} {fresh is idle} {runner.figures().size}"
        except BaseException as error:
            report = repr(error)
        os.write(write, report.encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        assert pipe.read() == "False False False 1"
    assert status == 0 and not borrowed.closed and not idle.closed
    assert runner.figures().size == 2  # the parent's books are untouched


def test_close_between_a_hand_off_and_the_waiter_waking_up(
    runners: List[ThreadedRunner[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The waiter was handed a connection, then close() ran before it woke: it gets
    PoolClosed (not a closed connection) and the books stay consistent."""
    from pgpool_compat.engine import threaded

    woken, gate = threading.Event(), threading.Event()
    real_sleep = threaded._ThreadWaiter.sleep

    def sleep_then_hold(self: Any, deadline: Any) -> None:
        real_sleep(self, deadline)
        woken.set()
        assert gate.wait(5)

    monkeypatch.setattr(threaded._ThreadWaiter, "sleep", sleep_then_hold)
    runner = factory_runner(runners, max_size=1, timeout=5)
    held = runner.acquire()
    outcome: List[Any] = []

    def waiter() -> None:
        try:
            outcome.append(runner.acquire())
        except PoolError as error:
            outcome.append(error)

    thread = threading.Thread(target=waiter)
    thread.start()
    deadline = time.monotonic() + 2
    while runner.figures().pending < 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    runner.release(held)  # handed to the waiter, which stops at the gate
    assert woken.wait(5)
    runner.close()
    gate.set()
    thread.join(5)
    assert isinstance(outcome[0], PoolClosed) and held.closed
    core = runner.core
    assert (core.size, core.opening, len(core.out)) == (0, 0, 0)


def test_a_factory_returning_none_is_refused_and_its_slot_freed(
    runners: List[ThreadedRunner[Any]],
) -> None:
    results: List[Any] = [None, Resource(1)]
    runner = factory_runner(runners, lambda: results.pop(0), max_size=1, timeout=0)
    with pytest.raises(DuplicateConnection, match="returned None"):
        runner.acquire()
    assert runner.figures().size == 0
    assert isinstance(runner.acquire(), Resource)


def test_threads_hammering_never_share_an_object_nor_exceed_the_caps(
    runners: List[ThreadedRunner[Any]],
) -> None:
    """16 threads x 150 checkouts over 3 keys, max 2 per key and 4 in all, some returns
    discarded, short timeouts: nobody ever holds what another holds, the caps hold, and the
    books add up at the end."""
    factory = Factory()
    runner = factory_runner(runners, factory, max_size=2, total_max_size=4, timeout=0.05)
    holders: Dict[int, int] = {}
    guard = threading.Lock()
    problems: List[str] = []

    def worker(seed: int) -> None:
        for n in range(150):
            key = ("a", "b", "c")[(seed + n) % 3]
            try:
                conn = runner.acquire(key)
            except PoolTimeout:
                continue
            with guard:
                if id(conn) in holders:
                    problems.append("one object lent twice")
                holders[id(conn)] = seed
                if runner.core.size > 4:
                    problems.append("total cap exceeded")
            with guard:
                del holders[id(conn)]
            runner.release(conn, discard=(seed + n) % 7 == 0)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive(), "a worker is stuck"
    assert problems == []
    figures = runner.figures()
    assert figures.used == 0 and figures.pending == 0 and figures.size == figures.idle <= 4
    assert figures.size == len([c for c in factory.made if not c.closed])
