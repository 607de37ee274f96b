"""Parity: first-come-first-served waiting with a timeout; LIFO and FIFO reuse."""

from __future__ import annotations

import threading
import time
from typing import Any, List

import pytest

from pgpool_compat.errors import PoolTimeout
from tests.parity.faces import Face, faces, wait_until

pytestmark = pytest.mark.timeout(60)


@faces()
def test_waiters_are_served_in_arrival_order(face: Face) -> None:
    pool = face.pool(1, 1, timeout=10)
    held = pool.get()
    served: List[int] = []

    def borrow(number: int) -> None:
        conn = pool.get()
        served.append(number)
        time.sleep(0.01)  # hold it a moment: a barging newcomer would show up here
        pool.put(conn)

    threads = []
    for number in range(4):
        thread = threading.Thread(target=borrow, args=(number,), daemon=True)
        thread.start()
        threads.append(thread)
        wait_until(lambda n=number: pool.stats()["requests_waiting"] == n + 1, what="queued")
    pool.put(held)
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    assert served == [0, 1, 2, 3]
    assert pool.stats()["pool_size"] == 1, "one connection served them all"


@faces()
def test_timeout_raises_pool_timeout_and_loses_no_slot(face: Face) -> None:
    pool = face.pool(1, 1, timeout=0.2)
    held = pool.get()
    started = time.monotonic()
    with pytest.raises(PoolTimeout, match=r"^connection pool exhausted"):
        pool.get()
    waited = time.monotonic() - started
    assert 0.15 <= waited < 3.0
    stats = pool.stats()
    assert stats["requests_errors"] == 1 and stats["requests_waiting"] == 0
    pool.put(held)
    assert pool.get() is held, "the slot the timed-out waiter left is still there"


@faces()
def test_a_waiter_gets_a_connection_returned_before_its_timeout(face: Face) -> None:
    pool = face.pool(1, 1, timeout=5)
    held = pool.get()
    got: List[Any] = []
    waiter = threading.Thread(target=lambda: got.append(pool.get()), daemon=True)
    waiter.start()
    wait_until(lambda: pool.stats()["requests_waiting"] == 1, what="queued")
    pool.put(held)
    waiter.join(5)
    assert got == [held]
    assert pool.stats()["requests_queued"] == 1


@faces()
def test_lifo_reuses_the_most_recently_returned(face: Face) -> None:
    pool = face.pool(2, 2)
    first, second = pool.get(), pool.get()
    pool.put(first)
    pool.put(second)
    assert pool.get() is second


@faces()
def test_fifo_reuses_the_longest_idle(face: Face) -> None:
    pool = face.pool(2, 2, lifo=False)
    first, second = pool.get(), pool.get()
    pool.put(first)
    pool.put(second)
    assert pool.get() is first
