#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: one command that does its own set-up.
#
#   bash scripts/test.sh [pytest arguments...]
#
# Creates .venv, installs the package with its test, bench and plot extras, makes sure a
# PostgreSQL server is available (local binaries, the pgserver wheel, or PGPOOL_TEST_DSN) and
# PgBouncer and valgrind (Debian packages, root only), then runs pytest. Exits non-zero on any failure, including "no tests ran".
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'scripts/test.sh: %s\n' "$*" >&2; }

is_root() { [ "$(id -u)" -eq 0 ]; }

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        if is_root && command -v apt-get >/dev/null; then
            apt_install python3-venv
            "$PYTHON" -m venv .venv
        else
            say "cannot create a virtualenv: install python3-venv (apt-get install python3-venv)"
            exit 1
        fi
    fi
fi
VPY=.venv/bin/python
# Old pips (Python 3.9's bundled one) cannot install a pyproject-only project in editable mode.
"$VPY" -m pip install -q --disable-pip-version-check --upgrade "pip>=23"
# bench and plot too: the bench tests run the real benchmark, plot included.
"$VPY" -m pip install -q --disable-pip-version-check -e '.[test,bench,plot]'
# queries pins the psycopg2 source distribution; its API is all the manager tests need.
"$VPY" -m pip install -q --disable-pip-version-check --no-deps queries

# A PostgreSQL to test against: PGPOOL_TEST_DSN, else local server binaries. Exit code 3 means
# "no binaries"; any other failure (say, a broken import) is left for pytest to report.
probe_status=0
if [ -z "${PGPOOL_TEST_DSN:-}" ]; then
    "$VPY" -c '
import sys
from pgpool_compat.testing import PostgresNotFound, _bin_dir
try:
    _bin_dir()
except PostgresNotFound:
    sys.exit(3)
' 2>/dev/null || probe_status=$?
fi
if [ "$probe_status" -eq 3 ]; then
    if is_root && command -v apt-get >/dev/null; then
        say "no PostgreSQL server binaries: installing the Debian package postgresql"
        apt_install postgresql
    else
        say "no PostgreSQL server binaries: installing the pgserver wheel (bundles PostgreSQL)"
        "$VPY" -m pip install -q --disable-pip-version-check pgserver
    fi
fi

# PgBouncer for the transaction-pooling tests.
if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ]; then
    if is_root && command -v apt-get >/dev/null; then
        say "installing the Debian package pgbouncer"
        apt_install pgbouncer
    else
        say "pgbouncer not found: the PgBouncer tests need it (as root: apt-get install pgbouncer)"
    fi
fi

# valgrind for the hot-path gate (tests/test_hot_path_gate.py counts instructions).
if ! command -v valgrind >/dev/null; then
    if is_root && command -v apt-get >/dev/null; then
        say "installing the Debian package valgrind"
        apt_install valgrind
    else
        say "valgrind not found: the hot-path gate is skipped (as root: apt-get install valgrind)"
    fi
fi

status=0
"$VPY" -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    say "pytest collected no tests: that is a failure"
fi
exit "$status"
