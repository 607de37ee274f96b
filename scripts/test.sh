#!/usr/bin/env bash
# Run the whole test suite on a fresh machine: one command that does its own set-up.
#
#   bash scripts/test.sh [pytest arguments...]
#
# Creates .venv, installs the package with its test, bench and plot extras (again only when
# setup.cfg or pyproject.toml changed since: a stamp in .venv remembers), makes sure a
# PostgreSQL server is available (local binaries, the embedded one of the pgserver wheel that
# the bench extra installs, or PGPOOL_TEST_DSN), PgBouncer and valgrind (Debian packages, root
# only), then runs pytest. Exits non-zero on any failure, including "no tests ran".
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
# The editable install follows source edits by itself; only the packaging files and this
# script's own install steps change what has to be installed.
STAMP=.venv/pgpool_compat-install.stamp
wanted_stamp=$(cat setup.cfg pyproject.toml scripts/test.sh | "$VPY" -c \
    'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
if [ "$(cat "$STAMP" 2>/dev/null)" != "$wanted_stamp" ]; then
    say "installing the package and its test, bench and plot extras into .venv"
    # Old pips (Python 3.9's bundled one) cannot install a pyproject-only project in editable mode.
    "$VPY" -m pip install -q --disable-pip-version-check --upgrade "pip>=23"
    # bench and plot too: the bench tests run the real benchmark, plot included. Setuptools'
    # editable-install banner goes to the log, shown only if the install fails.
    if ! "$VPY" -m pip install -q --disable-pip-version-check -e '.[test,bench,plot]' \
        >.venv/pip-install.log 2>&1; then
        cat .venv/pip-install.log >&2
        exit 1
    fi
    # queries pins the psycopg2 source distribution; its API is all the manager tests need.
    "$VPY" -m pip install -q --disable-pip-version-check --no-deps queries
    echo "$wanted_stamp" >"$STAMP"
fi

# nextorm and escudeiro (originals of two compat faces) need Python >= 3.12: the differential
# tests run their scenarios in .venv-seeds, made here when a Python 3.12+ exists (else those
# tests skip, naming what is missing).
seeds_python() {
    local candidate
    for candidate in python3.13 python3.12 "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python3; do
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}
if [ ! -x .venv-seeds/bin/python ]; then
    if py312=$(seeds_python); then
        "$py312" -m venv .venv-seeds || rm -rf .venv-seeds
    else
        say "no Python >= 3.12: the nextorm/escudeiro differential tests will skip"
    fi
fi
if [ -x .venv-seeds/bin/python ]; then
    .venv-seeds/bin/python -m pip install -q --disable-pip-version-check -r tests/compat/originals-py312.txt \
        || say "could not install tests/compat/originals-py312.txt in .venv-seeds"
fi

# A PostgreSQL to test against: PGPOOL_TEST_DSN, else local server binaries, else the embedded
# one (pgpool_compat.testing decides, as for the bench). Exit code 3 means neither (no pgserver
# wheel for this platform); any other failure (say, a broken import) is left for pytest.
probe_status=0
if [ -z "${PGPOOL_TEST_DSN:-}" ]; then
    "$VPY" -c '
import sys
from pgpool_compat.testing import PostgresNotFound, find_server_binaries
try:
    find_server_binaries()
except PostgresNotFound:
    sys.exit(3)
' 2>/dev/null || probe_status=$?
fi
if [ "$probe_status" -eq 3 ]; then
    if is_root && command -v apt-get >/dev/null; then
        say "no PostgreSQL server binaries: installing the Debian package postgresql"
        apt_install postgresql
    else
        say "no PostgreSQL server binaries and no pgserver wheel for this platform: install" \
            "PostgreSQL's server package or set PGPOOL_TEST_DSN"
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

# valgrind for the hot-path gate (tests/engine/test_hot_path_gate.py counts instructions).
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
