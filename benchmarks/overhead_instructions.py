"""Checkout + checkin cost in CPU instructions, counted by valgrind's callgrind.

Wall-clock timings on a shared machine swing by 2x with the load; instruction counts do not
(they exclude the kernel, so the socket probe's system call shows only its user-space part).
This complements ``python -m pgpool_compat bench``, which measures time.

    python benchmarks/overhead_instructions.py [--dsn DSN] [--ops 20000]

Each pool runs twice under callgrind, with 0 and with ``--ops`` checkout+checkin pairs; the
difference divided by ``--ops`` is the cost of one pair, start-up excluded.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from contextlib import ExitStack
from typing import Dict, List, Optional

_RUNNER = (
    "from pgpool_compat.engine.threaded import ThreadedRunner; "
    "from pgpool_compat.settings import Settings; "
    "from pgpool_compat.driver import Psycopg2Driver; "
    "from pgpool_compat.settings import PoolOptions; "
    "p = ThreadedRunner(Settings(min_size=1, max_size=4, timeout=0{extra}), "
    "Psycopg2Driver((dsn,), {{}}, PoolOptions())); p.prefill()"
)

#: The pools compared, as the code the child process runs to make one (``dsn`` in scope).
POOLS: Dict[str, str] = {
    "psycopg2.pool (stock)": "import psycopg2.pool as m; p = m.ThreadedConnectionPool(1, 4, dsn)",
    "pgpool_compat defaults": "import pgpool_compat as m; p = m.ThreadedConnectionPool(1, 4, dsn)",
    "pgpool_compat pool_check=None": (
        "import pgpool_compat as m; p = m.ThreadedConnectionPool(1, 4, dsn, pool_check=None)"
    ),
    "pgpool_compat production": (
        "import pgpool_compat as m; p = m.ThreadedConnectionPool(1, 4, dsn, pool_timeout=30, "
        "pool_max_idle=300, pool_max_lifetime=3600)"
    ),
    "ConnectionPool (factory)": (
        "import pgpool_compat as m, psycopg2; "
        "p = m.ConnectionPool(lambda: psycopg2.connect(dsn), min_size=1, max_size=4)"
    ),
    "engine runner, psycopg2 driver": _RUNNER.format(extra=""),
    "engine runner, check=None": _RUNNER.format(extra=", check=None"),
    "pgpool_compat metrics on (OTel SDK)": (
        "import pgpool_compat as m; from pgpool_compat.metrics import observe_alone; "
        "p = m.ThreadedConnectionPool(1, 4, dsn); observe_alone(p)"
    ),
    "pgpool_compat metrics on (Prometheus)": (
        "import pgpool_compat as m; from pgpool_compat.metrics import PrometheusCollector; "
        "c = PrometheusCollector(); p = m.ThreadedConnectionPool(1, 4, dsn)"
    ),
}

CHILD = """
import sys
dsn, ops = sys.argv[1], int(sys.argv[2])
{make}
get = getattr(p, "getconn", None) or p.acquire
put = getattr(p, "putconn", None) or p.release
for _ in range(ops):
    put(get())
"""


def instructions(make: str, dsn: str, ops: int) -> int:
    """Instructions callgrind counts for a child process doing ``ops`` pairs."""
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, "-c", CHILD.format(make=make), dsn, str(ops),
    ]  # fmt: skip
    # A fixed hash seed: dict and set layouts, hence instruction counts, repeat run to run.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    result = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=600, env=env
    )
    match = re.search(r"refs:\s*([\d,]+)", result.stderr)
    if match is None:
        raise RuntimeError("callgrind printed no instruction count")
    return int(match.group(1).replace(",", ""))


def cost_per_pair(make: str, dsn: str, ops: int) -> float:
    """Instructions one checkout+checkin pair costs, start-up excluded."""
    return (instructions(make, dsn, ops) - instructions(make, dsn, 0)) / ops


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="server to use (default: a throwaway one)")
    parser.add_argument("--ops", type=int, default=20000, help="pairs per measured run")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (apt-get install valgrind)")
    with ExitStack() as stack:
        dsn = args.dsn
        if dsn is None:
            from pgpool_compat.testing import PostgresServer

            dsn = stack.enter_context(PostgresServer()).dsn
        costs = {name: cost_per_pair(make, dsn, args.ops) for name, make in POOLS.items()}
    stock = costs["psycopg2.pool (stock)"]
    print(f"{'pool':40} {'instructions/pair':>18} {'vs stock':>9}")
    for name, cost in costs.items():
        print(f"{name:40} {cost:18,.0f} {cost / stock:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
