"""The ``face`` fixture: parametrized by ``faces()`` in tests/parity/faces.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.parity.faces import Face


@pytest.fixture
def face(request: pytest.FixtureRequest, pg_dsn: str) -> Iterator[Face]:
    built = Face(request.param, pg_dsn)
    try:
        yield built
    finally:
        built.teardown()
