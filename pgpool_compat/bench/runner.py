"""Runs scenarios over pools: rounds, interleaving, medians, ratios against stock psycopg2.

Noise on a shared machine comes in bursts, so pools are interleaved: each round runs every pool
once, in an order rotated by one per round (group scenarios go further and let the pools take
turns of a few milliseconds), and the report keeps each metric's median over the rounds.
"""

from __future__ import annotations

import logging
import math
import statistics
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, TextIO, Tuple

from .adapters import BenchPool, PoolSpec
from .scenarios import GroupScenario, Sample, Scenario, describe_error

__all__ = ["Outcome", "Progress", "Row", "ScenarioResult", "median_sample", "run_bench"]

logger = logging.getLogger("pgpool_compat")


@dataclass
class Row:
    """One pool's medians in one scenario."""

    key: str
    label: str
    metrics: Sample
    samples: int


@dataclass
class ScenarioResult:
    name: str
    description: str
    rows: List[Row]


@dataclass
class Outcome:
    scenarios: List[ScenarioResult] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


class Progress:
    """A one-line progress bar on a terminal; silent when the stream is not one."""

    WIDTH = 24

    def __init__(self, total: int, stream: Optional[TextIO] = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.total = max(1, total)
        self.done = 0
        self.enabled = self.stream.isatty()

    def step(self, text: str) -> None:
        """Show that the ``done + 1``-th step, described by ``text``, is starting."""
        self.done += 1
        if not self.enabled:
            return
        filled = self.WIDTH * (self.done - 1) // self.total
        bar = "#" * filled + "." * (self.WIDTH - filled)
        line = f"[{bar}] {self.done}/{self.total} {text}"
        self.stream.write("\r" + line[:100].ljust(100))
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()


def median_sample(samples: Sequence[Sample]) -> Sample:
    """Each metric's median over the samples, ignoring samples where it is undefined."""
    keys: List[str] = []
    for sample in samples:
        keys.extend(key for key in sample if key not in keys)
    merged: Sample = {}
    for key in keys:
        values = [value for sample in samples if (value := sample.get(key)) is not None]
        merged[key] = statistics.median(values) if values else None
    return merged


def _rotated(items: Sequence[PoolSpec], by: int) -> List[PoolSpec]:
    if not items:
        return []
    shift = by % len(items)
    return list(items[shift:]) + list(items[:shift])


def _close_quietly(pool: BenchPool, label: str) -> None:
    try:
        pool.close()
    except Exception as exc:  # a pool that fails to close must not end the bench
        logger.warning("bench: closing %s failed: %s", label, describe_error(exc))


def total_steps(scenarios: Sequence[Scenario], specs: Sequence[PoolSpec]) -> int:
    per_round = [sum(1 for spec in specs if spec.runs_in(s.name)) for s in scenarios]
    return sum(per_round) * (scenarios[0].settings.rounds if scenarios else 0)


def run_bench(
    dsn: str,
    scenarios: Sequence[Scenario],
    specs: Sequence[PoolSpec],
    *,
    progress: Progress,
) -> Outcome:
    """Run every scenario on every pool that takes part in it; one failing pool is a note."""
    outcome = Outcome()
    for scenario in scenarios:
        pools = [spec for spec in specs if spec.runs_in(scenario.name)]
        samples: Dict[str, List[Sample]] = {spec.key: [] for spec in pools}
        failures: Dict[str, str] = {}
        for round_index in range(scenario.settings.rounds):
            order = _rotated(pools, round_index)
            if isinstance(scenario, GroupScenario):
                _group_round(dsn, scenario, order, samples, failures, progress)
                continue
            for spec in order:
                progress.step(f"{scenario.name}: {spec.label}")
                _one_sample(dsn, scenario, spec, samples, failures)
        rows: List[Row] = []
        for spec in pools:
            kept = samples[spec.key]
            if kept:
                rows.append(Row(spec.key, spec.label, median_sample(kept), len(kept)))
            if spec.key in failures:
                outcome.notes.append(
                    f"{scenario.name}: {spec.label} failed "
                    f"({len(kept)}/{scenario.settings.rounds} rounds kept): {failures[spec.key]}"
                )
        _add_ratios(rows, specs)
        outcome.scenarios.append(ScenarioResult(scenario.name, scenario.description, rows))
    progress.finish()
    return outcome


def _one_sample(
    dsn: str,
    scenario: Scenario,
    spec: PoolSpec,
    samples: Dict[str, List[Sample]],
    failures: Dict[str, str],
) -> None:
    try:
        pool = spec.open(dsn, scenario.minconn, scenario.maxconn)
    except Exception as exc:
        failures[spec.key] = describe_error(exc)
        return
    try:
        samples[spec.key].append(scenario.measure(pool))
    except Exception as exc:
        failures[spec.key] = describe_error(exc)
    finally:
        _close_quietly(pool, spec.label)


def _group_round(
    dsn: str,
    scenario: GroupScenario,
    order: Sequence[PoolSpec],
    samples: Dict[str, List[Sample]],
    failures: Dict[str, str],
    progress: Progress,
) -> None:
    """Open every pool, let the scenario measure them together, close them all."""
    opened: List[Tuple[PoolSpec, BenchPool]] = []
    try:
        for spec in order:
            progress.step(f"{scenario.name}: {spec.label}")
            try:
                opened.append((spec, spec.open(dsn, scenario.minconn, scenario.maxconn)))
            except Exception as exc:
                failures[spec.key] = describe_error(exc)
        group = [(spec.key, pool) for spec, pool in opened if spec.key not in failures]
        for key, sample in scenario.measure_group(group, failures).items():
            samples[key].append(sample)
    finally:
        for spec, pool in opened:
            _close_quietly(pool, spec.label)


def _add_ratios(rows: List[Row], specs: Sequence[PoolSpec]) -> None:
    """``vs_stock``: ops/s over stock psycopg2.pool's (above 1 is faster); ``vs_held`` where a
    held connection, the limit of any pool, ran in the same scenario."""
    references = (
        ("vs_stock", {spec.key for spec in specs if spec.is_stock}),
        ("vs_held", {spec.key for spec in specs if spec.is_limit}),
    )
    for name, keys in references:
        reference = next((row.metrics.get("ops_per_s") for row in rows if row.key in keys), None)
        if reference is None and name != "vs_stock":
            continue
        for row in rows:
            ops = row.metrics.get("ops_per_s")
            row.metrics[name] = (
                ops / reference
                if ops is not None and reference and math.isfinite(reference)
                else None
            )
