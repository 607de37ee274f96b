"""Pool identity for a DSN: one hashed id per connection target, however it is spelled.

The manager keys its pools by this id so that it never has to hold the DSN (and the password
in it) after the call that named it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, TypeVar

import psycopg2
from psycopg2 import ProgrammingError
from psycopg2.extensions import make_dsn, parse_dsn

__all__ = [
    "call_without_secrets",
    "connect",
    "libpq_dsn",
    "pool_id",
    "target_name",
    "without_secrets",
]

# queries' own scheme; libpq only knows postgresql:// and postgres://.
_QUERIES_SCHEME = "pgsql://"

# A per-process key: a pool id that reaches a log or a report cannot be attacked offline to
# recover the password that took part in it. Ids are stable for the life of the process.
_ID_KEY = os.urandom(32)

T = TypeVar("T")

#: A setting libpq refused, quoted after "invalid" on its line ('invalid integer value "..."
#: for connection option "port"', 'invalid sslmode value: "..."'), at the start of the
#: message or after the server it was connecting to ('connection to server at "h", port
#: 5432 failed: invalid integer value "..." for connection option "connect_timeout"'). The
#: value runs to the quote before ' for connection option', else to the line's last quote:
#: it may hold quotes itself.
_REFUSED_VALUE = re.compile(
    r'(\binvalid\b[^"\n]*")(.*?)("(?: for connection option "[^"\n]*")?[^"\n]*)$', re.MULTILINE
)

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
    # Every value libpq refused, wherever it is quoted: a factory's DSN is not known here,
    # and the value may be a misplaced password.
    masked = _REFUSED_VALUE.sub(r"\1***\3", message)
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


#: A port, or libpq's comma-separated ports of a multi-host target.
_PORTS = re.compile(r"\d+(,\d*)*")

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
    if not _PORTS.fullmatch(port):
        port = "?"  # not a port, so libpq refuses it: it may be a misplaced password
    user = params.get("user") or env.get("PGUSER") or _login()
    dbname = params.get("dbname") or env.get("PGDATABASE") or user
    return f"{host}:{port}/{dbname}"


def _login() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment: libpq would fail as well
        return "postgres"
