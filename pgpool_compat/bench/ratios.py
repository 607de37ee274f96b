"""Rates and ratios the bench can stand behind, or none.

A pool's rate (ops/s) is taken over the turns it ran in every round pooled together: the
upper quartile for scenarios that time many short turns (interference from elsewhere on the
machine only ever slows a turn down, so the faster turns show the pool's own speed), the
median for scenarios with one figure per round. On a machine shared by many processes a
round can go wrong for one pool alone: its server backend lands on a busy CPU and every turn
of that round is slow. Pooling the turns of all rounds lets a few such rounds fall below the
quartile; fresh pools (and backends) each round make them rare.

A ratio against the reference pool (stock psycopg2.pool, or the held connection) comes with a
bootstrap confidence interval: the rounds are resampled with replacement, whole (a round's
luck stays together), and the ratio recomputed. The report shows the ratio only when that
interval lies within :data:`TOLERANCE` of it; otherwise the cell says "noisy". A short run on
a busy machine may support no figure at all, and a wrong figure (a 2.4x that the full run
calls 0.95x) is worse than none.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

__all__ = [
    "CONFIDENCE",
    "MIN_ROUNDS",
    "TOLERANCE",
    "Ratio",
    "pooled_rate",
    "quantile",
    "rate_ratio",
]

#: Confidence of the interval that must fit within the tolerance.
CONFIDENCE = 0.90
#: How far (as a factor) the interval may reach from the ratio: 1.1 is within 10% either way.
TOLERANCE = 1.10
#: Fewer rounds than this never settle a ratio: their resamples are too few to bound it.
MIN_ROUNDS = 5
#: Bootstrap resamples per interval; the seed is fixed so a report can be recomputed exactly.
RESAMPLES = 400
SEED = 0

#: A round's turns are summarised by at most this many evenly spaced quantiles before
#: resampling: the bootstrap then costs the same for a long round as for a short one.
SKETCH = 50

#: The turn rates (ops/s) of one pool in each round.
Rates = Sequence[Sequence[float]]


@dataclass(frozen=True)
class Ratio:
    """A ratio of two pooled rates and its confidence interval (None: too few rounds)."""

    value: float
    low: Optional[float]
    high: Optional[float]

    @property
    def settled(self) -> bool:
        """True when the interval lies within :data:`TOLERANCE` of the ratio."""
        if self.low is None or self.high is None:
            return False
        return self.low * TOLERANCE >= self.value and self.high <= self.value * TOLERANCE


def quantile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank quantile of a non-empty sequence (``fraction`` 0.5 is the median)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def pooled_rate(rounds: Rates, fraction: float) -> Optional[float]:
    """The ``fraction`` quantile of every round's turn rates together; None if there are none."""
    rates = [rate for turns in rounds for rate in turns if math.isfinite(rate)]
    return quantile(rates, fraction) if rates else None


def _sketch(turns: Sequence[float]) -> List[float]:
    ordered = sorted(rate for rate in turns if math.isfinite(rate))
    if len(ordered) <= SKETCH:
        return ordered
    return [ordered[int((index + 0.5) * len(ordered) / SKETCH)] for index in range(SKETCH)]


def _ratio_of(pairs: Sequence[Tuple[Sequence[float], Sequence[float]]], fraction: float) -> float:
    figure = pooled_rate([turns for turns, _ in pairs], fraction)
    reference = pooled_rate([turns for _, turns in pairs], fraction)
    if figure is None or not reference:
        return math.nan
    return figure / reference


def rate_ratio(
    pairs: Sequence[Tuple[Sequence[float], Sequence[float]]], fraction: float
) -> Optional[Ratio]:
    """``(this pool's turn rates, the reference's)`` per round -> the ratio of their pooled
    rates, with its bootstrap interval from :data:`MIN_ROUNDS` rounds on. None when either
    side has no rate at all (or the reference's is zero)."""
    value = _ratio_of(pairs, fraction)
    if not math.isfinite(value):
        return None
    if len(pairs) < MIN_ROUNDS:
        return Ratio(value, None, None)
    sketched = [(_sketch(turns), _sketch(reference)) for turns, reference in pairs]
    chooser = random.Random(SEED)
    resampled: List[float] = []
    for _ in range(RESAMPLES):
        ratio = _ratio_of([chooser.choice(sketched) for _ in sketched], fraction)
        if math.isfinite(ratio):
            resampled.append(ratio)
    if not resampled:
        return Ratio(value, None, None)
    tail = (1.0 - CONFIDENCE) / 2
    return Ratio(value, quantile(resampled, tail), quantile(resampled, 1.0 - tail))
