"""Pool identity for a DSN: one hashed id per connection target, however it is spelled.

The manager keys its pools by this id so that it never has to hold the DSN (and the password
in it) after the call that named it.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, Mapping, Tuple

from psycopg2 import ProgrammingError
from psycopg2.extensions import make_dsn, parse_dsn

__all__ = ["libpq_dsn", "pool_id", "target_name"]

# queries' own scheme; libpq only knows postgresql:// and postgres://.
_QUERIES_SCHEME = "pgsql://"

# A per-process key: a pool id that reaches a log or a report cannot be attacked offline to
# recover the password that took part in it. Ids are stable for the life of the process.
_ID_KEY = os.urandom(32)

_WITHHELD = "invalid dsn (details withheld: they may contain a password)"


def libpq_dsn(dsn: str) -> str:
    """``dsn`` as libpq accepts it: queries' ``pgsql://`` URIs become ``postgresql://``."""
    if dsn.startswith(_QUERIES_SCHEME):
        return "postgresql://" + dsn[len(_QUERIES_SCHEME) :]
    return dsn


def _parameters(dsn: str) -> Dict[str, str]:
    try:
        params: Dict[str, str] = parse_dsn(libpq_dsn(dsn))
    except ProgrammingError:
        # libpq quotes a fragment of the string it could not parse, which may be the password.
        raise ProgrammingError(_WITHHELD) from None
    return params


def pool_id(dsn: str) -> str:
    """A 32-hex-digit id for the connection target ``dsn`` (key=value string or URI).

    Equivalent spellings give the same id: keyword order, URI versus key=value and percent
    escapes do not matter, because the id is taken over libpq's own parse of the string with
    the keywords sorted. Every keyword takes part, the password included: two callers that
    present different credentials must never share an authenticated connection. The digest
    is a keyed BLAKE2b, so the id reveals nothing about the DSN; the DSN itself is not kept.
    """
    canonical = json.dumps(sorted(_parameters(dsn).items()), separators=(",", ":"))
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16, key=_ID_KEY).hexdigest()


#: psycopg2.connect keywords that are not connection parameters.
_NOT_LIBPQ = ("connection_factory", "cursor_factory", "async", "async_")


def target_name(args: Tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """``host:port/dbname`` of psycopg2 connect arguments, with libpq's defaults; never the
    user or password. A DSN libpq cannot parse gives ``"unknown"``."""
    libpq_kwargs = {k: v for k, v in kwargs.items() if k not in _NOT_LIBPQ}
    try:
        params = parse_dsn(make_dsn(*args[:1], **libpq_kwargs))
    except (ProgrammingError, TypeError):
        return "unknown"
    env = os.environ
    host = params.get("host") or env.get("PGHOST") or "localhost"
    port = params.get("port") or env.get("PGPORT") or "5432"
    user = params.get("user") or env.get("PGUSER") or _login()
    dbname = params.get("dbname") or env.get("PGDATABASE") or user
    return f"{host}:{port}/{dbname}"


def _login() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment: libpq would fail as well
        return "postgres"
