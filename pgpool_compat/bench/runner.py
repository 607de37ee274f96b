"""Runs scenarios over pools: rounds, interleaving, medians, ratios against stock psycopg2.

Noise on a shared machine comes in bursts, so pools are interleaved: each round runs every pool
once, with fresh pools, in an order rotated by one per round (group scenarios go further and
let the pools take turns of a few milliseconds), and the report keeps each metric's median over
the rounds; ops/s and the ratios come from the rates pooled over rounds (:mod:`.ratios`). A
ratio is shown only when its confidence interval is tight: after the scenario's minimum rounds,
more run (up to its maximum) while some ratio is unsettled.
"""

from __future__ import annotations

import logging
import statistics
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, TextIO, Tuple

from .adapters import BenchPool, PoolSpec
from .ratios import pooled_rate, rate_ratio
from .scenarios import GroupScenario, Sample, Scenario, TurnRates, describe_error

__all__ = ["Outcome", "Progress", "Row", "ScenarioResult", "median_sample", "run_bench"]

logger = logging.getLogger("pgpool_compat")


@dataclass
class Row:
    """One pool's medians in one scenario."""

    key: str
    label: str
    metrics: Sample
    samples: int
    #: Ratio metrics whose rounds disagreed too much to show a figure ("noisy").
    noisy: List[str] = field(default_factory=list)


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
        """``total``: the steps expected; :meth:`extend` adds those of an extra round."""
        self.stream = sys.stderr if stream is None else stream
        self.total = max(1, total)
        self.done = 0
        self.enabled = self.stream.isatty()
        #: Set by a Ctrl-C handler: the next step raises KeyboardInterrupt again, in case the
        #: first one was lost (Python drops exceptions raised inside ``__del__`` methods, and
        #: the pools' finalizers run all through the bench).
        self.interrupted = False

    def step(self, text: str) -> None:
        """Show that the ``done + 1``-th step, described by ``text``, is starting."""
        if self.interrupted:
            raise KeyboardInterrupt
        self.done += 1
        if not self.enabled:
            return
        filled = self.WIDTH * (self.done - 1) // self.total
        bar = "#" * filled + "." * (self.WIDTH - filled)
        line = f"[{bar}] {self.done}/{self.total} {text}"
        self.stream.write("\r" + line[:100].ljust(100))
        self.stream.flush()

    def extend(self, steps: int) -> None:
        self.total += steps

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
    """Steps of the scenarios' minimum rounds (extra rounds extend the progress bar)."""
    per_round = [sum(1 for spec in specs if spec.runs_in(s.name)) for s in scenarios]
    return sum(per_round) * (scenarios[0].settings.rounds if scenarios else 0)


@dataclass
class Round:
    """What one round measured, by pool key (a pool that failed that round is absent)."""

    samples: Dict[str, Sample] = field(default_factory=dict)
    turns: TurnRates = field(default_factory=dict)

    def rates(self, key: str) -> Optional[List[float]]:
        """The pool's turn rates, or its one ops/s figure for a scenario without turns."""
        if self.turns.get(key):
            return self.turns[key]
        ops = self.samples.get(key, {}).get("ops_per_s")
        return None if ops is None else [ops]


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
        settings = scenario.settings
        rounds: List[Round] = []
        failures: Dict[str, str] = {}
        while len(rounds) < settings.max_rounds:
            if len(rounds) >= settings.rounds:
                unsettled = any(row.noisy for row in _rows(scenario, pools, rounds, specs))
                if not (unsettled and scenario.more_rounds_help):
                    break
                progress.extend(len(pools))
            measured = Round()
            order = _rotated(pools, len(rounds))
            if isinstance(scenario, GroupScenario):
                _group_round(dsn, scenario, order, measured, failures, progress)
            else:
                for spec in order:
                    progress.step(f"{scenario.name}: {spec.label}")
                    _one_sample(dsn, scenario, spec, measured.samples, failures)
            rounds.append(measured)
        rows = _rows(scenario, pools, rounds, specs)
        for spec in pools:
            if spec.key in failures:
                kept = sum(1 for measured in rounds if spec.key in measured.samples)
                outcome.notes.append(
                    f"{scenario.name}: {spec.label} failed "
                    f"({kept}/{len(rounds)} rounds kept): {failures[spec.key]}"
                )
        outcome.scenarios.append(ScenarioResult(scenario.name, scenario.description, rows))
    progress.finish()
    return outcome


def _rows(
    scenario: Scenario,
    pools: Sequence[PoolSpec],
    rounds: Sequence[Round],
    specs: Sequence[PoolSpec],
) -> List[Row]:
    """Each pool's medians over the rounds it finished, its pooled rate, its ratios."""
    rows: List[Row] = []
    for spec in pools:
        kept = [measured.samples[spec.key] for measured in rounds if spec.key in measured.samples]
        if not kept:
            continue
        metrics = median_sample(kept)
        rates = [rates for measured in rounds if (rates := measured.rates(spec.key))]
        ops = pooled_rate(rates, scenario.rate_quantile)
        metrics["ops_per_s"] = ops
        if "ns_per_op" in metrics:  # the same figure, inverted
            metrics["ns_per_op"] = 1e9 / ops if ops else None
        rows.append(Row(spec.key, spec.label, metrics, len(kept)))
    # Where more rounds cannot settle a ratio (its ops/s follow the machine's connect or restart
    # times), no round count makes it one to stand behind: it is always shown as noisy.
    _add_ratios(rows, rounds, specs, scenario.rate_quantile, trusted=scenario.more_rounds_help)
    return rows


def _one_sample(
    dsn: str,
    scenario: Scenario,
    spec: PoolSpec,
    samples: Dict[str, Sample],
    failures: Dict[str, str],
) -> None:
    try:
        pool = spec.open(dsn, scenario.minconn, scenario.maxconn)
    except Exception as exc:
        failures[spec.key] = describe_error(exc)
        return
    try:
        samples[spec.key] = scenario.measure(pool)
    except Exception as exc:
        failures[spec.key] = describe_error(exc)
    finally:
        _close_quietly(pool, spec.label)


def _group_round(
    dsn: str,
    scenario: GroupScenario,
    order: Sequence[PoolSpec],
    measured: Round,
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
        measured.samples.update(scenario.measure_group(group, failures, measured.turns))
    finally:
        for spec, pool in opened:
            _close_quietly(pool, spec.label)


def _add_ratios(
    rows: List[Row],
    rounds: Sequence[Round],
    specs: Sequence[PoolSpec],
    fraction: float,
    *,
    trusted: bool = True,
) -> None:
    """``vs_stock``: ops/s over stock psycopg2.pool's (above 1 is faster); ``vs_held`` where a
    held connection, the limit of any pool, ran in the same scenario. Each comes with its
    interval as ``<name>_low``/``<name>_high``; a ratio whose interval is too wide (or that
    has too few rounds) is listed in the row's ``noisy``."""
    references = (
        ("vs_stock", {spec.key for spec in specs if spec.is_stock}),
        ("vs_held", {spec.key for spec in specs if spec.is_limit}),
    )
    for name, keys in references:
        reference = next((row.key for row in rows if row.key in keys), None)
        if reference is None:
            if name == "vs_stock":  # always a column: undefined without stock
                for row in rows:
                    row.metrics[name] = None
            continue
        for row in rows:
            pairs = [
                (rates, base)
                for measured in rounds
                if (rates := measured.rates(row.key)) and (base := measured.rates(reference))
            ]
            ratio = rate_ratio(pairs, fraction)
            row.metrics[name] = None if ratio is None else ratio.value
            row.metrics[f"{name}_low"] = None if ratio is None else ratio.low
            row.metrics[f"{name}_high"] = None if ratio is None else ratio.high
            if ratio is not None and not (ratio.settled and trusted) and row.key != reference:
                row.noisy.append(name)
