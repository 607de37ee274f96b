"""Run the Python examples of one Markdown page, as a reader pasting them would.

    .venv/bin/python tests/tools/docs_examples.py README.md

Sybil finds the page's ``python`` fenced blocks; they run in order, in one namespace (a block
may use names from an earlier one), in this fresh interpreter, so no page can leak state into
another or into the test process. ``tests/tools/test_docs.py`` starts this script once per page with
``DATABASE_URL`` and the ``PG*`` variables naming the test server.

After the last block, every server session the page opened must be closed: examples clean up
after themselves, or the page fails.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psycopg2
from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser

#: How long closed sessions may take to leave pg_stat_activity.
SESSIONS_GONE_WITHIN_S = 5.0


def _client_sessions() -> dict[int, str]:
    """pid -> application_name of the server's client sessions, this check's own excepted."""
    conn = psycopg2.connect("", application_name="pgpool_compat-docs-check")
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pid, application_name FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
            return dict(cur.fetchall())
    finally:
        conn.close()


def _sessions_left(before: dict[int, str]) -> dict[int, str]:
    deadline = time.monotonic() + SESSIONS_GONE_WITHIN_S
    while True:
        left = {pid: name for pid, name in _client_sessions().items() if pid not in before}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def run_page(path: Path) -> int:
    """Evaluate every Python block of ``path``; the number of blocks run."""
    document = Sybil(parsers=[PythonCodeBlockParser()]).parse(path)
    document.namespace["__name__"] = "__main__"  # blocks behave as a pasted script
    before = _client_sessions()
    examples = list(document.examples())
    for example in examples:
        print(f"{path.name}:{example.line}: running", flush=True)
        example.evaluate()
    left = _sessions_left(before)
    if left:
        names = ", ".join(sorted({name or "(no application_name)" for name in left.values()}))
        raise SystemExit(
            f"{path.name}: {len(left)} server session(s) still open after the last example"
            f" ({names}): close the pools the examples open"
        )
    return len(examples)


if __name__ == "__main__":
    page = Path(sys.argv[1]).resolve()
    count = run_page(page)
    print(f"{page.name}: {count} example(s) ran")
