"""A hypothesis state machine: a model of the pool against the real pool on a real server.

The model keeps the closed flag, the borrowed map (key -> connection) and the idle list (LIFO,
each connection alive or killed). Steps, each run on one of several worker threads so a
connection is often returned by another thread than the one that borrowed it: getconn (auto
or explicit key), putconn (kept or ``close=True``), a return of a connection the pool does not
lend out, pg_terminate_backend of an idle or a borrowed connection, a burst of concurrent
checkouts, closeall and a fresh pool. After every step the pool's books must equal the model,
no handed-out connection may be dead, and the server must have exactly the model's live
connections (counted by application_name).

Stock psycopg2.pool runs the same machine (derandomized) and the divergence it hits is
recorded for the reliability table.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

import hypothesis.strategies as st
import psycopg2
import psycopg2.pool
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.helpers import terminate_backends

from .support import bounded_query, make_pool, peer_hung_up, wait_until

pytestmark = pytest.mark.timeout(120)

MINCONN, MAXCONN, THREADS = 1, 3, 3
STEP_TIMEOUT = 10.0


class Workers:
    """``count`` threads, each with its own queue, so a step runs on the thread it names."""

    def __init__(self, count: int) -> None:
        self._queues: List[queue.Queue[Any]] = [queue.Queue() for _ in range(count)]
        self._threads = [
            threading.Thread(target=self._serve, args=(q,), daemon=True, name=f"worker-{i}")
            for i, q in enumerate(self._queues)
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _serve(jobs: queue.Queue[Any]) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            call, future = job
            try:
                future.set_result(call())
            except BaseException as exc:
                future.set_exception(exc)

    def run(self, thread: int, call: Callable[[], Any]) -> Any:
        """Run ``call`` on worker ``thread``, wait (bounded), re-raise what it raised."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queues[thread].put((call, future))
        return future.result(STEP_TIMEOUT)

    def stop(self) -> None:
        for jobs in self._queues:
            jobs.put(None)
        for thread in self._threads:
            thread.join(STEP_TIMEOUT)


def build_machine(impl: str, dsn: str, admin: Any, tally: Dict[str, int]) -> type:
    app = f"pgpool_stateful_{uuid.uuid4().hex[:8]}"
    pool_dsn = f"{dsn} application_name={app}"

    def server_count() -> int:
        with admin.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,))
            count: int = cur.fetchone()[0]
            return count

    class PoolMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            tally["examples"] += 1
            self.workers = Workers(THREADS)
            self.old_pools: List[Any] = []
            self.killed: List[Any] = []  # strong references: ids never reused meanwhile
            self.open_pool()

        def open_pool(self) -> None:
            self.pool = make_pool(impl, MINCONN, MAXCONN, pool_dsn)
            self.closed = False
            self.borrowed: Dict[Any, Any] = {}  # a closed pool's leftovers are closed anyway
            self.idle: List[Tuple[Any, bool]] = [(conn, True) for conn in self.pool._pool]
            self.returned: List[Any] = []  # once lent out, now back: not ours to return again

        def on_thread(self, thread: int, call: Callable[[], Any]) -> Any:
            return self.workers.run(thread, call)

        def is_killed(self, conn: Any) -> bool:
            return any(conn is each for each in self.killed)

        # -- steps --------------------------------------------------------------------------

        @rule(key=st.sampled_from([None, "a", "b"]), thread=st.integers(0, THREADS - 1))
        def getconn(self, key: Optional[str], thread: int) -> None:
            tally["steps"] += 1
            try:
                conn = self.on_thread(thread, lambda: self.pool.getconn(key))
            except psycopg2.pool.PoolError as exc:
                if self.closed:
                    assert "closed" in str(exc)
                else:
                    assert key not in self.borrowed and len(self.borrowed) == MAXCONN, str(exc)
                    assert "exhausted" in str(exc)
                return
            assert not self.closed, "getconn worked on a closed pool"
            if key in self.borrowed:
                assert conn is self.borrowed[key], "a key already out must give the same conn"
                return
            assert len(self.borrowed) < MAXCONN, "more than maxconn lent out"
            # LIFO: dead idle ones are dropped from the top until a live one comes up.
            while self.idle and not self.idle[-1][1]:
                self.idle.pop()
            if self.idle:
                expected, _ = self.idle.pop()
                assert conn is expected, "not the newest live idle connection"
            else:
                assert not any(conn is c for c in self.returned), "a new connection expected"
            outcome = bounded_query(conn)
            assert outcome.ok, f"dead connection handed out: {outcome.status} {outcome.error}"
            conn.rollback()
            self.borrowed[key if key is not None else ("auto", id(conn))] = conn

        @precondition(lambda self: self.borrowed)
        @rule(data=st.data(), close=st.booleans(), thread=st.integers(0, THREADS - 1))
        def putconn(self, data: st.DataObject, close: bool, thread: int) -> None:
            tally["steps"] += 1
            key = data.draw(st.sampled_from(sorted(self.borrowed, key=repr)))
            conn = self.borrowed.pop(key)
            if self.closed:
                with pytest.raises(psycopg2.pool.PoolError, match="closed"):
                    self.on_thread(thread, lambda: self.pool.putconn(conn, close=close))
                return
            alive = not self.is_killed(conn)
            self.on_thread(thread, lambda: self.pool.putconn(conn, close=close))
            kept = any(conn is c for c in self.pool._pool)
            if not close and len(self.idle) < MINCONN and (alive or kept):
                # A killed one may be kept (found dead at the next checkout) or dropped now.
                self.idle.append((conn, alive))
            self.returned.append(conn)

        @precondition(lambda self: self.returned and not self.closed)
        @rule(data=st.data(), thread=st.integers(0, THREADS - 1))
        def putconn_not_lent(self, data: st.DataObject, thread: int) -> None:
            tally["steps"] += 1
            conn = data.draw(st.sampled_from(self.returned))
            if any(conn is c for c in self.borrowed.values()):
                return  # lent out again meanwhile: a valid return, not this step
            with pytest.raises(psycopg2.pool.PoolError, match="unkeyed"):
                self.on_thread(thread, lambda: self.pool.putconn(conn))

        @precondition(lambda self: not self.closed and (self.idle or self.borrowed))
        @rule(data=st.data())
        def kill_backend(self, data: st.DataObject) -> None:
            tally["steps"] += 1
            choices = [("idle", i) for i, (_, alive) in enumerate(self.idle) if alive]
            choices += [("borrowed", k) for k, c in self.borrowed.items() if not self.is_killed(c)]
            if not choices:
                return
            where, which = data.draw(st.sampled_from(sorted(choices, key=repr)))
            conn = self.idle[which][0] if where == "idle" else self.borrowed[which]
            terminate_backends(dsn, [conn.info.backend_pid])
            assert peer_hung_up([conn])
            self.killed.append(conn)
            if where == "idle":
                self.idle[which] = (conn, False)

        @precondition(
            lambda self: (
                not self.closed and not self.borrowed and all(alive for _, alive in self.idle)
            )
        )
        @rule(size=st.integers(2, MAXCONN))
        def burst(self, size: int) -> None:
            """``size`` threads check out, query and return at the same moment."""
            tally["steps"] += 1
            barrier = threading.Barrier(size, timeout=STEP_TIMEOUT)

            def one() -> bool:
                barrier.wait()
                conn = self.pool.getconn()
                try:
                    ok = bounded_query(conn).ok
                    conn.rollback()
                    return ok
                finally:
                    self.pool.putconn(conn)

            pool_for_burst = concurrent.futures.ThreadPoolExecutor(size)
            try:
                results = [pool_for_burst.submit(one) for _ in range(size)]
                assert all(r.result(STEP_TIMEOUT) for r in results), "dead connection in burst"
            finally:
                pool_for_burst.shutdown(wait=True)
            assert len(self.pool._pool) == min(MINCONN, len(self.idle) + size), "idle count"
            self.idle = [(conn, True) for conn in self.pool._pool]

        @precondition(lambda self: not self.closed)
        @rule()
        def closeall(self) -> None:
            tally["steps"] += 1
            self.pool.closeall()
            self.closed = True
            self.idle = []

        @precondition(lambda self: self.closed)
        @rule()
        def new_pool(self) -> None:
            tally["steps"] += 1
            self.old_pools.append(self.pool)
            self.open_pool()

        # -- invariants -----------------------------------------------------------------------

        @invariant()
        def books_match_model(self) -> None:
            if self.closed:
                return
            reverse = {id(conn): key for key, conn in self.pool._used.items()}
            assert self.pool._rused == reverse, "_rused is not the inverse of _used"
            used = sorted(id(c) for c in self.pool._used.values())
            assert used == sorted(id(c) for c in self.borrowed.values()), "borrowed differ"
            assert [id(c) for c in self.pool._pool] == [id(c) for c, _ in self.idle], (
                "idle list differs from the model"
            )
            if hasattr(self.pool, "get_stats"):
                stats = self.pool.get_stats()
                assert stats["pool_size"] == len(self.borrowed) + len(self.idle)
                assert stats["pool_available"] == len(self.idle)

        @invariant()
        def server_agrees(self) -> None:
            if self.closed:
                expected = sum(
                    not self.is_killed(c) and not c.closed for c in self.borrowed.values()
                )
            else:
                expected = sum(alive for _, alive in self.idle) + sum(
                    not self.is_killed(c) for c in self.borrowed.values()
                )
            # A closed connection's backend needs a moment to leave pg_stat_activity.
            assert wait_until(lambda: server_count() == expected, 3), (
                f"server has {server_count()} connections, model expects {expected}"
            )

        def teardown(self) -> None:
            for pool in [*self.old_pools, self.pool]:
                if not pool.closed:
                    pool.closeall()
            for conn in self.borrowed.values():
                conn.close()  # borrowed from a closed pool: already closed, or ours to close
            self.workers.stop()

    return PoolMachine


def test_pool_against_model(impl: str, record: Any, pg_dsn: str, admin_conn: Any) -> None:
    tally = {"examples": 0, "steps": 0}
    machine = build_machine(impl, pg_dsn, admin_conn, tally)
    budget = settings(
        max_examples=12 if impl == "stock" else 25,
        stateful_step_count=12,
        deadline=None,
        derandomize=impl == "stock",
        # Stock is expected to diverge: report the first divergence, don't spend time shrinking.
        phases=[Phase.generate] if impl == "stock" else list(Phase),
        suppress_health_check=list(HealthCheck),
    )
    divergence: Optional[BaseException] = None
    try:
        run_state_machine_as_test(machine, settings=budget)  # type: ignore[no-untyped-call]
    except Exception as exc:
        divergence = exc
    first_line = (
        (str(divergence).strip().splitlines() or [type(divergence).__name__])[0]
        if divergence is not None
        else "none"
    )
    record(
        "stateful-model",
        "Hypothesis state machine: getconn/putconn/foreign put/kill backend/burst/closeall "
        f"on {THREADS} threads vs a model",
        {
            "examples run": tally["examples"],
            "steps run": tally["steps"],
            "first divergence": first_line,
        },
    )
    if impl == "pgpool_compat" and divergence is not None:
        raise divergence
