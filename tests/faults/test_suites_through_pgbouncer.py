"""The drop-in and option suites, run whole through PgBouncer in transaction pooling mode.

One test: a subprocess runs the suites below through ``python -m tests.faults.pgbouncer``
(a throwaway PostgreSQL with PgBouncer in front, ``PGPOOL_TEST_DSN`` pointing at PgBouncer)
with ``-m "not own_session"``: the tests marked ``own_session`` need a server session of their
own per connection (they count a pool's server sessions, LISTEN across borrowers, keep session
state across transactions, or ``pg_terminate_backend(pg_backend_pid())``), which transaction
pooling does not give. Everything else must pass there, and must be a substantial number.

The differential suite (test_differential.py and the sequence tests of test_subclass.py) is
all ``own_session``: every sequence ends by counting the pools' server sessions by
``application_name``, so it is not in this selection, which keeps the run at about 30 s
(271 tests; the differential through PgBouncer would add minutes of 5 s session waits).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .pgbouncer import require_pgbouncer

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]

SUITES = [
    "tests/dropin/test_contract.py",
    "tests/dropin/test_bugfixes.py",
    "tests/dropin/test_subclass.py",
    "tests/dropin/test_threads.py",
    "tests/options/test_options.py",
    "tests/options/test_waiting.py",
    "tests/options/test_lifecycle.py",
    "tests/options/test_checks_resets.py",
    "tests/options/test_stats_and_methods.py",
    "tests/options/test_leaks_keeper.py",
]

#: 271 pass today; far fewer means the selection broke (a collection error, say).
MIN_PASSED = 265
RUN_TIMEOUT = 240


def test_dropin_and_option_suites_pass_through_pgbouncer() -> None:
    require_pgbouncer()
    command = [
        sys.executable, "-m", "tests.faults.pgbouncer", "--",
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
        "-m", "not own_session", *SUITES,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    output = done.stdout + done.stderr
    summary = output.strip().splitlines()[-1] if output.strip() else "(no output)"
    assert done.returncode == 0, output[-6000:]
    passed = re.search(r"(\d+) passed", summary)
    assert passed is not None, summary
    assert int(passed.group(1)) >= MIN_PASSED, summary
    assert not re.search(r"\d+ (failed|error)", summary), summary
