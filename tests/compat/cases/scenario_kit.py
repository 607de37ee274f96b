"""Helpers shared by the differential scenarios (no pytest, no pgpool_compat: this runs in the
originals' Python 3.12 venv too)."""

from __future__ import annotations

import inspect
import threading
import time
from typing import Any, Callable, Dict, List, Optional


class Counter:
    """Numbers the objects a scenario's factory makes, and logs what happens to them."""

    def __init__(self) -> None:
        self.made = 0
        self.log: List[Any] = []

    def next(self) -> int:
        self.made += 1
        return self.made


class Conn:
    """A plain fake connection with a sync ``close()``."""

    def __init__(self, counter: Counter) -> None:
        self.i = counter.next()
        self.closed = False
        self._counter = counter

    def close(self) -> None:
        self.closed = True
        self._counter.log.append(("close", self.i))


class AsyncConn(Conn):
    """A fake connection whose ``close()`` is a coroutine (asyncpg's style)."""

    async def close(self) -> None:  # type: ignore[override]
        self.closed = True
        self._counter.log.append(("close", self.i))


class Unhashable(list):  # type: ignore[type-arg]
    """A resource that cannot be hashed (a list) and still has ``close()``."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, counter: Counter) -> None:
        super().__init__()
        self.i = counter.next()
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Slotted:
    """A resource with ``__slots__`` and no ``__weakref__``: nothing can be attached to it."""

    __slots__ = ("closed", "i")

    def __init__(self, counter: Counter) -> None:
        self.i = counter.next()
        self.closed = False

    def close(self) -> None:
        self.closed = True


def error_of(call: Callable[[], Any]) -> Optional[str]:
    """The class name of what ``call()`` raises, or None."""
    try:
        call()
    except BaseException as error:  # the scenarios compare the class
        return type(error).__name__
    return None


def validation(call: Callable[[], Any], *names: str) -> Any:
    """A constructor's rejection: the error class, and whether the message names each keyword."""
    try:
        call()
    except Exception as error:
        return [type(error).__name__, [name in str(error) for name in names]]
    return "accepted"


def signature(func: Callable[..., Any]) -> List[Any]:
    """Parameter names, kinds and defaults (reprs), ``self`` left out."""
    params = list(inspect.signature(func).parameters.values())
    return [
        [p.name, p.kind.name, None if p.default is p.empty else repr(p.default)]
        for p in params
        if p.name != "self"
    ]


def elapsed_between(call: Callable[[], Any], low: float, high: float) -> Any:
    """Run ``call``; report its error class and whether it took between low and high s."""
    started = time.monotonic()
    error = error_of(call)
    took = time.monotonic() - started
    return [error, low <= took <= high]


def in_thread(target: Callable[[], Any], bound: float = 5.0) -> Dict[str, Any]:
    """Run ``target`` in a daemon thread; returns a dict filled with its result or error."""
    box: Dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = target()
        except BaseException as error:
            box["error"] = type(error).__name__

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    box["thread"] = thread
    box["bound"] = bound
    return box


def join(box: Dict[str, Any]) -> Dict[str, Any]:
    box["thread"].join(box["bound"])
    return {k: v for k, v in box.items() if k in ("result", "error")} or {"still": "running"}
