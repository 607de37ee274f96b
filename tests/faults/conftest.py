"""Fixtures of the fault suite: both pools side by side, the figures recorder, a TCP proxy,
PgBouncer and a second server.

Every fault test takes ``impl`` (``"stock"`` then ``"pgpool_compat"``) and ``record``; the
figures land in ``build/reliability.json`` when the session ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable, Dict, Optional

import psycopg2.extensions
import pytest

from pgpool_compat.testing import PostgresServer
from tests.helpers import backend_pids

from .pgbouncer import PgBouncer, require_pgbouncer
from .proxy import Proxy
from .support import IMPLS, Figures, reproduce_command, wait_until

#: ``record(fault_id, title, {label: value}, pool=None)``: ``pool`` defaults to the test's.
Record = Callable[..., None]


@pytest.fixture(scope="session")
def figures(request: pytest.FixtureRequest, pg_server: Any) -> Iterator[Figures]:
    """The session's measured figures, merged into build/reliability.json at the end."""
    collected = Figures(request.config.rootpath)
    yield collected
    collected.write(pg_server.server_version)


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> str:
    """Which pool the scenario runs on: stock psycopg2.pool, then ours."""
    name: str = request.param
    return name


@pytest.fixture
def record(request: pytest.FixtureRequest, figures: Figures, impl: str) -> Record:
    """``record(fault_id, title, {label: value})``: one cell of the reliability table.

    ``pool="stock"`` records the stock cell from a scenario that only runs on ours (one that
    needs an option stock lacks), so the table still says why stock has no figure.
    """

    def record(
        fault: str, title: str, measured: Dict[str, Any], pool: Optional[str] = None
    ) -> None:
        figures.record(
            fault=fault,
            title=title,
            pool=pool or impl,
            reproduce=reproduce_command(request.node.nodeid),
            figures=measured,
        )

    return record


@pytest.fixture
def proxy(pg_dsn: str) -> Iterator[Proxy]:
    """A pass/cut/blackhole proxy in front of the shared server (faults stay in the proxy)."""
    params = psycopg2.extensions.parse_dsn(pg_dsn)
    with Proxy(params.get("host", "127.0.0.1"), int(params.get("port", 5432))) as running:
        yield running


@pytest.fixture(scope="module")
def pgbouncer(pg_dsn: str) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode in front of the shared server, for one test module.

    Gone when the module ends, server connections included: later tests count the shared
    server's backends and must not see PgBouncer's.
    """
    require_pgbouncer()
    before = set(backend_pids(pg_dsn))
    with PgBouncer(pg_dsn) as running:
        yield running
    assert wait_until(lambda: not set(backend_pids(pg_dsn)) - before, 5), (
        "PgBouncer's server connections outlived it"
    )


@pytest.fixture
def spare_server() -> Iterator[PostgresServer]:
    """A second throwaway server (failover target), removed afterwards."""
    with PostgresServer(name="pgpool_compat-spare") as server:
        yield server
