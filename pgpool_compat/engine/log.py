"""The engine's one log vocabulary: one helper per event, every line naming the pool.

Errors are named by class only, never by ``str(error)``: libpq quotes the DSN, password
included, in some of its messages.
"""

from __future__ import annotations

import logging
from typing import List, Optional

__all__ = [
    "check_raised",
    "closed",
    "connect_failed",
    "dead_dropped",
    "keeper_failed",
    "leak",
    "logger",
    "opened",
    "reconnected",
    "reset_failed",
    "timed_out",
]

logger = logging.getLogger("pgpool_compat")


def timed_out(name: str, waited: float) -> None:
    logger.info("%s: checkout timed out after %.3f s", name, waited)


def dead_dropped(name: str, how: str) -> None:
    """A connection found dead (``how``: "socket", "ping", "check") was closed."""
    logger.info("%s: dropped a dead connection (%s)", name, how)


def check_raised(name: str, error: BaseException) -> None:
    logger.info("%s: check raised %s", name, type(error).__name__)


def connect_failed(name: str, error: BaseException) -> None:
    logger.warning("%s: connection failed: %s", name, type(error).__name__)


def reconnected(name: str, failures: int) -> None:
    """A connect succeeded after ``failures`` failed ones in a row (the server is back)."""
    logger.info("%s: reconnected after %d failed connects", name, failures)


def keeper_failed(name: str, error: BaseException, retry_in: float) -> None:
    logger.info(
        "%s: keeper could not reconnect (%s); retrying in %.1f s",
        name,
        type(error).__name__,
        retry_in,
    )


def reset_failed(name: str, error: BaseException) -> None:
    logger.warning(
        "%s: reset of a returned connection failed (%s); connection discarded",
        name,
        type(error).__name__,
    )


def leak(name: str, age: float, limit: float, stack: Optional[List[str]]) -> None:
    logger.warning(
        "%s: connection checked out %.1f s ago, longer than the leak timeout (%g s);"
        " checked out at:\n%s",
        name,
        age,
        limit,
        "".join(stack or ["(stack not captured)\n"]),
    )


def opened(name: str) -> None:
    logger.debug("%s: opened a connection", name)


def closed(name: str) -> None:
    logger.debug("%s: closed", name)
