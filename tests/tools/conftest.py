"""Fixtures of the tools tests: a temporary directory of the test's own for the servers its
processes start."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgpool_compat import testing as harness


@pytest.fixture
def private_tmp() -> Iterator[Path]:
    """A ``TMPDIR`` for the test's processes that the server's OS user can enter. The
    harness's sweep of dead owners' leftovers then never reaches anybody else's servers;
    afterwards whatever the test's processes left in it is swept (their servers stopped) and
    the directory removed."""
    path = Path(tempfile.mkdtemp(prefix="pgpool_compat-tools-test-"))
    path.chmod(0o755)  # root's server runs as another user, who must reach its directory
    try:
        yield path
    finally:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(tempfile, "tempdir", str(path))
            harness._sweep_orphans()
        shutil.rmtree(path, ignore_errors=True)
