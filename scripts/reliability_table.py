"""Render docs/reliability.md from the figures the fault tests measured.

    python -m pytest tests/faults          # writes build/reliability.json
    python scripts/reliability_table.py    # writes docs/reliability.md

One table, a row per fault, stock psycopg2.pool beside pgpool_compat, and the pytest command
that reproduces the row. Every figure comes from build/reliability.json, written by the tests
(tests/faults/support.py); nothing here is typed by hand but the prose around the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "build" / "reliability.json"
OUTPUT = ROOT / "docs" / "reliability.md"

POOLS = (("stock", "stock psycopg2.pool"), ("pgpool_compat", "pgpool_compat"))

#: Row order: the issue's order (restart, terminate, network, failover, PgBouncer, the rest).
ORDER = (
    "restart-idle",
    "crash-idle",
    "restart-load",
    "restart-load-waiting",
    "background-refill",
    "terminate-idle",
    "terminate-borrowed",
    "terminate-waiter",
    "idle-session-timeout",
    "network-cut",
    "network-stall-socket",
    "network-stall-ping",
    "network-stall-many",
    "network-stall-return",
    "network-blackhole-wait",
    "network-blackhole-connect",
    "failover",
    "pgbouncer-restart",
    "pgbouncer-session-state",
    "stateful-model",
    "fork",
    "bad-input",
    "bad-sizes",
    "secrets",
    "isolation-discard",
)

INTRO = """\
# Reliability: what happens when the database misbehaves

Each row is a fault caused for real by the test suite (tests/faults/) against a throwaway
PostgreSQL: servers restarted and stopped, backends terminated, connections cut or silently
blackholed through a TCP proxy, PgBouncer in transaction mode, forks, bad input. Every scenario
runs on stock `psycopg2.pool` and on `pgpool_compat` with the same steps; the figures below are
the ones those runs measured (`build/reliability.json`), rendered by
`scripts/reliability_table.py`. Stock has no `pool_*` options: where a row sets one, stock runs
with its only behaviour. "dead connections handed out" counts `getconn()` results whose first
statement failed; "slots leaked" counts slots still booked after every borrower returned.
"""


def cell(result: Dict[str, Any] | None) -> str:
    if result is None:
        return "not measured"
    return "<br>".join(f"{label}: {show(value)}" for label, value in result["figures"])


def show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}" if value < 100 else f"{value:.0f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def render(document: Dict[str, Any]) -> str:
    faults: Dict[str, Any] = document.get("faults", {})
    ids = [fault for fault in ORDER if fault in faults]
    ids += sorted(fault for fault in faults if fault not in ORDER)
    lines: List[str] = [INTRO]
    env = document.get("environment", {})
    if env:
        lines.append(
            f"Measured with Python {env.get('python')}, psycopg2 {env.get('psycopg2')}, "
            f"PostgreSQL {env.get('postgresql')} on {env.get('machine')}, "
            f"last written {env.get('written_at')}.\n"
        )
    header = ["Fault", *(title for _, title in POOLS), "Reproduce"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for fault in ids:
        entry = faults[fault]
        row = [show(entry["title"])]
        row += [cell(entry["results"].get(pool)) for pool, _ in POOLS]
        row.append(f"`{entry['reproduce']}`")
        lines.append("| " + " | ".join(row) + " |")
    lines.append(
        "\nRegenerate: `python -m pytest tests/faults && python scripts/reliability_table.py`."
    )
    return "\n".join(lines) + "\n"


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figures", type=Path, default=FIGURES)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    if not args.figures.exists():
        print(f"{args.figures} not found: run python -m pytest tests/faults first", file=sys.stderr)
        return 1
    text = render(json.loads(args.figures.read_text()))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
