"""Pool identity for a DSN: one hashed id per connection target, however it is spelled.

The manager keys its pools by this id so that it never has to hold the DSN (and the password
in it) after the call that named it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Callable, Dict, List, Optional, TypeVar

import psycopg2
from psycopg2 import ProgrammingError
from psycopg2.extensions import parse_dsn

__all__ = ["call_without_secrets", "connect", "libpq_dsn", "pool_id", "without_secrets"]

# queries' own scheme; libpq only knows postgresql:// and postgres://.
_QUERIES_SCHEME = "pgsql://"

# A per-process key: a pool id that reaches a log or a report cannot be attacked offline to
# recover the password that took part in it. Ids are stable for the life of the process.
_ID_KEY = os.urandom(32)

T = TypeVar("T")

_FIRST_QUOTED = re.compile(r'"[^"]*"')

_WITHHELD = "invalid dsn (details withheld: they may contain a password)"


def libpq_dsn(dsn: str) -> str:
    """``dsn`` as libpq accepts it: queries' ``pgsql://`` URIs become ``postgresql://``."""
    if dsn.startswith(_QUERIES_SCHEME):
        return "postgresql://" + dsn[len(_QUERIES_SCHEME) :]
    return dsn


def _parameters(dsn: str) -> Dict[str, str]:
    try:
        return dict(parse_dsn(libpq_dsn(dsn)))
    except ProgrammingError:
        pass
    # libpq quotes a fragment of the string it could not parse, which may be the password;
    # raised outside the except block, so not even ``__context__`` keeps libpq's message.
    raise ProgrammingError(_WITHHELD)


def connect(*args: Any, **kwargs: Any) -> Any:
    """``psycopg2.connect``, except that its errors never show the password."""
    # Looked up at call time: tests and users monkeypatch psycopg2.connect.
    return call_without_secrets(psycopg2.connect, *args, **kwargs)


def call_without_secrets(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``func(*args, **kwargs)``; a psycopg2 error it raises is re-raised without the
    password it may show (see ``without_secrets``; ``args``/``kwargs`` are taken to be
    ``psycopg2.connect``'s). Costs nothing unless it raises."""
    try:
        return func(*args, **kwargs)
    except psycopg2.Error as error:
        safe = without_secrets(error, args, kwargs)
        if safe is None:
            raise
    # Raised outside the except block, so that not even ``__context__`` keeps the original.
    raise safe


def without_secrets(
    error: BaseException, args: Any = (), kwargs: Optional[Dict[str, Any]] = None
) -> Optional[BaseException]:
    """A copy of a connect ``error`` (same class) that shows no password, or ``None`` when
    ``error`` shows none. ``args``/``kwargs`` are what ``psycopg2.connect`` was given.

    libpq quotes the token it could not parse (``invalid percent-encoded token:
    "p%zzSecret"``), which may be the password: such errors get the details withheld; a
    setting it refused has its quoted value masked; a password known from the arguments is
    masked wherever it appears. Raise the copy outside any ``except`` block, so that its
    ``__context__`` does not keep the original.
    """
    kwargs = kwargs or {}
    dsn = args[0] if args else kwargs.get("dsn")
    secrets: List[str] = [str(kwargs["password"])] if kwargs.get("password") else []
    if isinstance(dsn, str):
        try:
            secrets.append(parse_dsn(libpq_dsn(dsn)).get("password", ""))
        except ProgrammingError:
            # Unparsable: libpq's message quotes a fragment of it, maybe the password.
            return _same_class(error, _WITHHELD)
    message = str(error)
    if message.startswith("invalid dsn"):
        return _same_class(error, _WITHHELD)
    masked = message
    if message.startswith("invalid"):
        # libpq's check of one setting ('invalid integer value "..." for connection option
        # "port"') quotes the value first: mask it, since a factory's DSN is not known here.
        masked = _FIRST_QUOTED.sub('"***"', masked, count=1)
    for secret in secrets:
        if secret:
            masked = masked.replace(secret, "***")
    return None if masked == message else _same_class(error, masked)


def _same_class(error: BaseException, message: str) -> BaseException:
    try:
        copy: BaseException = type(error)(message)
    except Exception:  # a class that cannot be built from a message alone
        copy = ProgrammingError(message)
    return copy


def pool_id(dsn: str) -> str:
    """A 32-hex-digit id for the connection target ``dsn`` (key=value string or URI).

    Equivalent spellings give the same id: keyword order, URI versus key=value and percent
    escapes do not matter, because the id is taken over libpq's own parse of the string with
    the keywords sorted. Every keyword takes part, the password included: two callers that
    present different credentials must never share an authenticated connection. The digest
    is a keyed BLAKE2b, so the id reveals nothing about the DSN; the DSN itself is not kept.
    """
    if not isinstance(dsn, str):
        raise TypeError(f"dsn must be a str, got {type(dsn).__name__}")
    canonical = json.dumps(sorted(_parameters(dsn).items()), separators=(",", ":"))
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16, key=_ID_KEY).hexdigest()
