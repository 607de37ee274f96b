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
import re
import shutil
import subprocess
import sys
from contextlib import ExitStack
from typing import Dict, List, Optional

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
get, put = p.getconn, p.putconn
for _ in range(ops):
    put(get())
"""


def instructions(make: str, dsn: str, ops: int) -> int:
    """Instructions callgrind counts for a child process doing ``ops`` pairs."""
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, "-c", CHILD.format(make=make), dsn, str(ops),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    match = re.search(r"refs:\s*([\d,]+)", result.stderr)
    if match is None:
        raise RuntimeError("callgrind printed no instruction count")
    return int(match.group(1).replace(",", ""))


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
        costs = {
            name: (instructions(make, dsn, args.ops) - instructions(make, dsn, 0)) / args.ops
            for name, make in POOLS.items()
        }
    stock = costs["psycopg2.pool (stock)"]
    print(f"{'pool':40} {'instructions/pair':>18} {'vs stock':>9}")
    for name, cost in costs.items():
        print(f"{name:40} {cost:18,.0f} {cost / stock:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
