"""Fork as a fault, measured for the reliability table (tests/dropin/test_fork.py holds the
contract).

A parent with idle and borrowed connections forks several children (gunicorn --preload,
multiprocessing): each child checks out, queries, returns, then calls ``closeall()`` on its
way out, as an exit hook would. Counted: children that were handed one of the parent's
sessions, and parent sessions still alive on the same backend afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any, Dict, List

import pytest

from .support import bounded_query, make_pool

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX only"),
]

CHILDREN = 3
CHILD_TIMEOUT = 15.0


def child_main(pool: Any, report_fd: int) -> None:
    """In the child: borrow, query, return, closeall; report the backend pid it got."""
    report: Dict[str, Any] = {}
    try:
        conn = pool.getconn()
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            report["pid"] = cur.fetchone()[0]
        conn.rollback()
        pool.putconn(conn)
        pool.closeall()
    except Exception as exc:
        report["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    os.write(report_fd, json.dumps(report).encode())


def run_child(pool: Any) -> Dict[str, Any]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        try:
            os.close(read_fd)
            child_main(pool, write_fd)
        finally:
            os._exit(0)
    os.close(write_fd)
    deadline = time.monotonic() + CHILD_TIMEOUT
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_fd)
            return {"error": "child hung"}
        time.sleep(0.01)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    return json.loads(data) if data else {"error": "child died without a report"}


def test_fork_children_and_parent_sessions(impl: str, record: Any, pg_dsn: str) -> None:
    pool = make_pool(impl, 3, 3 + CHILDREN, pg_dsn)
    try:
        borrowed = pool.getconn()
        parent: List[Any] = [borrowed, *pool._pool]
        parent_pids = [conn.info.backend_pid for conn in parent]
        reports = [run_child(pool) for _ in range(CHILDREN)]
        took_parents = sum(report.get("pid") in parent_pids for report in reports)
        child_errors = [report["error"] for report in reports if "error" in report]
        alive = 0
        for conn, pid in zip(parent, parent_pids):
            outcome = bounded_query(conn, "SELECT pg_backend_pid()")
            alive += outcome.ok and not conn.closed and conn.info.backend_pid == pid
        record(
            "fork",
            f"os.fork(): {CHILDREN} children borrow, return and closeall; parent holds "
            "1 borrowed + 2 idle",
            {
                "children handed a parent's session": f"{took_parents} of {CHILDREN}",
                "child errors": "; ".join(child_errors) or "none",
                "parent sessions alive afterwards": f"{alive} of {len(parent)}",
            },
        )
        if impl == "pgpool_compat":
            assert took_parents == 0 and not child_errors
            assert alive == len(parent)
        else:
            assert alive < len(parent), "stock's children close the parent's sessions"
        if not pool.closed:
            pool.putconn(borrowed)
    finally:
        if not pool.closed:
            pool.closeall()
