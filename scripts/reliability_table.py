"""Render docs/reliability.md from the figures the fault tests measured.

    .venv/bin/python -m pytest tests/faults          # writes build/reliability.json
    .venv/bin/python scripts/reliability_table.py    # writes docs/reliability.md

One table, a row per fault, stock psycopg2.pool beside pgpool_compat, and the pytest command
that reproduces the row. Every figure comes from build/reliability.json, written by the tests
(tests/faults/support.py); nothing here is typed by hand but the prose around the table.

A row of the current docs/reliability.md that this run did not measure (PgBouncer not
installed, a test file not run) is kept with its last measured figures and marked as such,
and the script says so: the table never loses a row silently.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

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


#: Added to the fault cell of a row copied from the previous table instead of measured.
KEPT_MARK = "<br>*not measured in this run: last measured figures, kept from the previous table*"
#: Each row's fault cell starts with an anchor naming the fault, so the next run can tell
#: which rows it measured again (and other pages can link to a row).
ANCHOR = re.compile(r'^<a id="([^"]+)"></a>')
#: Shown commands name the virtualenv's interpreter: a bare ``python`` is often not there.
INTERPRETER = ".venv/bin/python"


class OldRow(NamedTuple):
    """A fault row of the previous table: its fault id (None in tables older than the
    anchors), its title, and its other cells as written."""

    fault: Optional[str]
    title: str
    cells: str

    @property
    def name(self) -> str:
        return self.fault or self.title

    def kept_line(self) -> str:
        anchor = f'<a id="{self.fault}"></a>' if self.fault else ""
        return f"| {anchor}{self.title}{KEPT_MARK} | {self.cells}"


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


def shown_command(command: str) -> str:
    return INTERPRETER + command[len("python") :] if command.startswith("python ") else command


def previous_rows(markdown: str) -> List[OldRow]:
    """The fault rows of a table this script wrote."""
    rows: List[OldRow] = []
    for line in markdown.splitlines():
        if not line.startswith("| ") or line.startswith("| Fault |"):
            continue
        first, _, cells = line[2:].partition(" | ")
        match = ANCHOR.match(first)
        title = (first[match.end() :] if match else first).replace(KEPT_MARK, "")
        # Tables before the anchors showed a bare `python`.
        cells = cells.replace("| `python -m ", f"| `{INTERPRETER} -m ")
        rows.append(OldRow(match.group(1) if match else None, title, cells))
    return rows


def render(document: Dict[str, Any], previous: Sequence[OldRow] = ()) -> Tuple[str, List[str]]:
    """The page, and the names of the rows of ``previous`` that ``document`` did not measure
    and that the page keeps, marked."""
    faults: Dict[str, Any] = document.get("faults", {})
    titles = {show(entry["title"]) for entry in faults.values()}
    kept = [row for row in previous if row.fault not in faults and row.title not in titles]
    lines_by_id: Dict[str, str] = {}
    for fault, entry in faults.items():
        row = [f'<a id="{fault}"></a>{show(entry["title"])}']
        row += [cell(entry["results"].get(pool)) for pool, _ in POOLS]
        row.append(f"`{shown_command(entry['reproduce'])}`")
        lines_by_id[fault] = "| " + " | ".join(row) + " |"
    lines_by_id.update((row.fault, row.kept_line()) for row in kept if row.fault)
    ids = [fault for fault in ORDER if fault in lines_by_id]
    ids += sorted(fault for fault in lines_by_id if fault not in ORDER)
    lines: List[str] = [INTRO]
    env = document.get("environment", {})
    if env:
        lines.append(
            f"Measured with Python {env.get('python')}, psycopg2 {env.get('psycopg2')}, "
            f"PostgreSQL {env.get('postgresql')} on {env.get('machine')}, "
            f"last written {env.get('written_at')}.\n"
        )
    if kept:
        lines.append(
            f"{len(kept)} row(s) marked *not measured in this run* keep the figures of an "
            "earlier run: their tests did not run this time (PgBouncer not installed, say).\n"
        )
    header = ["Fault", *(title for _, title in POOLS), "Reproduce"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    lines.extend(lines_by_id[fault] for fault in ids)
    lines.extend(row.kept_line() for row in kept if not row.fault)
    lines.append(
        f"\nRegenerate: `{INTERPRETER} -m pytest tests/faults && "
        f"{INTERPRETER} scripts/reliability_table.py`."
    )
    return "\n".join(lines) + "\n", [row.name for row in kept]


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--figures", type=Path, default=FIGURES)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    if not args.figures.exists():
        print(
            f"{args.figures} not found: run {INTERPRETER} -m pytest tests/faults first",
            file=sys.stderr,
        )
        return 1
    previous = previous_rows(args.output.read_text()) if args.output.exists() else []
    text, kept = render(json.loads(args.figures.read_text()), previous)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    if kept:
        print(
            f"kept {len(kept)} row(s) this run did not measure, marked as such: {', '.join(kept)}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
