"""Turning an outcome into the table, the JSON document and the PNG chart."""

from __future__ import annotations

import importlib.util
import math
import textwrap
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .._commands import pip_install
from .ratios import CONFIDENCE, TOLERANCE
from .runner import Outcome, Row

__all__ = ["PLOT_MISSING", "format_table", "plot_available", "to_json", "write_plot"]

PLOT_MISSING = f"--plot needs matplotlib: {pip_install(repr('pgpool_compat[plot]'))}"

Formatter = Callable[[float], str]


def _count(value: float) -> str:
    return f"{value:g}"


def _ratio(value: float) -> str:
    return "starved" if math.isinf(value) else f"{value:.2f}"


def _times(value: float) -> str:
    return f"{value:.2f}x"


def _decimal(value: float) -> str:
    return f"{value:,.1f}" if value < 10_000 else f"{value:,.0f}"


COMMON_COLUMNS: List[Tuple[str, str, Formatter]] = [
    ("ops/s", "ops_per_s", lambda value: f"{value:,.0f}"),
    ("vs stock", "vs_stock", _times),
    ("p50 us", "p50_us", _decimal),
    ("p99 us", "p99_us", _decimal),
    ("errors", "errors", _count),
    ("opened", "connections_opened", _count),
]

EXTRA_COLUMNS: Dict[str, List[Tuple[str, str, Formatter]]] = {
    "overhead": [
        ("ns/op", "ns_per_op", lambda value: f"{value:,.0f}"),
        ("best ns/op", "best_ns_per_op", lambda value: f"{value:,.0f}"),
    ],
    "query": [("vs held", "vs_held", _times)],
    "contention": [
        ("max/min", "fairness", _ratio),
        ("p99 wait ms", "p99_wait_ms", _decimal),
        ("max wait ms", "max_wait_ms", _decimal),
        ("vs ideal", "p99_wait_vs_ideal", _times),
    ],
    "churn": [("opened/1k", "opened_per_1000", _decimal)],
    "restart": [("dead", "dead_after_restart", _count), ("1st good ms", "first_good_ms", _decimal)],
}


#: Shown instead of a ratio whose rounds disagreed (see :mod:`.ratios`).
NOISY = "noisy"


def _cell(row: Row, key: str, formatter: Formatter) -> str:
    if key in row.noisy:
        return NOISY
    value = row.metrics.get(key)
    return "-" if value is None else formatter(value)


def format_table(outcome: Outcome, header_lines: Sequence[str] = ()) -> str:
    """Plain-text tables, one per scenario, ready for a terminal or a Markdown code block."""
    lines: List[str] = list(header_lines)
    for scenario in outcome.scenarios:
        columns = COMMON_COLUMNS + EXTRA_COLUMNS.get(scenario.name, [])
        cells = [
            [row.label] + [_cell(row, key, fmt) for _, key, fmt in columns]
            for row in scenario.rows
        ]
        headers = ["pool"] + [title for title, _, _ in columns]
        widths = [
            max([len(headers[index])] + [len(line[index]) for line in cells])
            for index in range(len(headers))
        ]

        def render(values: Sequence[str], widths: Sequence[int] = widths) -> str:
            first = values[0].ljust(widths[0])
            rest = [value.rjust(width) for value, width in zip(values[1:], widths[1:])]
            return "  ".join([first, *rest]).rstrip()

        lines.append("")
        lines.append(f"{scenario.name}: {scenario.description}")
        lines.append(render(headers))
        lines.append(render(["-" * width for width in widths]))
        lines.extend(render(line) for line in cells)
        if not scenario.rows:
            lines.append("(no pool finished this scenario)")
    notes = list(outcome.notes)
    if any(row.noisy for scenario in outcome.scenarios for row in scenario.rows):
        notes.append(
            f"{NOISY}: the ratio's {CONFIDENCE:.0%} confidence interval over the rounds reaches"
            f" more than {TOLERANCE - 1:.0%} either side of it, so no figure is shown; a full"
            " run (no --quick) or a quieter machine may settle it"
        )
    if notes:
        lines.append("")
        lines.extend(f"note: {note}" for note in notes)
    return "\n".join(lines) + "\n"


def _json_number(value: Optional[float]) -> Optional[float]:
    if value is None or not math.isfinite(value):
        return None
    if float(value).is_integer():
        return int(value)
    return round(value, 3)


def _json_row(row: Row) -> Dict[str, Any]:
    result: Dict[str, Any] = {"pool": row.label, "key": row.key, "samples": row.samples}
    for _, key, _ in COMMON_COLUMNS:
        result[key] = _json_number(row.metrics.get(key))
    for key, value in row.metrics.items():
        result.setdefault(key, _json_number(value))
    result["noisy"] = list(row.noisy)
    return result


def to_json(
    outcome: Outcome, machine: Mapping[str, Any], settings: Mapping[str, Any]
) -> Dict[str, Any]:
    """``{"machine", "settings", "notes", "scenarios": [{"name", "results": [...]}]}``.

    Each result carries ``pool``, ``ops_per_s``, ``p50_us``, ``p99_us``, ``errors``,
    ``connections_opened`` and ``vs_stock``, then the scenario's own keys; a metric that is
    undefined (or infinite, like the fairness of a starved thread) is null. Each ratio comes
    with its confidence interval (``vs_stock_low``, ``vs_stock_high``); ``noisy`` lists the
    ratios the table shows as "noisy" (their median is still given, for the record).
    """
    return {
        "machine": dict(machine),
        "settings": dict(settings),
        "notes": list(outcome.notes),
        "scenarios": [
            {
                "name": scenario.name,
                "description": scenario.description,
                "results": [_json_row(row) for row in scenario.rows],
            }
            for scenario in outcome.scenarios
        ],
    }


def plot_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


#: What each scenario's chart shows: (metric, axis label).
PLOT_METRICS: Dict[str, Tuple[str, str]] = {
    "overhead": ("ops_per_s", "checkouts + checkins per second (higher is better)"),
    "query": ("ops_per_s", "SELECT 1 round trips per second (higher is better)"),
    # The longest wait, not the p99: barging pools serve most checkouts at once and starve a
    # few threads, which only the longest wait shows.
    "contention": ("max_wait_ms", "longest checkout wait, ms (lower is better)"),
    "churn": ("opened_per_1000", "connections opened per 1000 checkouts (lower is better)"),
    "restart": ("dead_after_restart", "dead connections handed out (lower is better)"),
}


def write_plot(outcome: Outcome, path: str, title_lines: Sequence[str]) -> None:
    """A PNG with one horizontal bar chart per scenario, of the metric that tells it apart."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    scenarios = [scenario for scenario in outcome.scenarios if scenario.rows]
    height = 0.8 + 0.4 * sum(len(scenario.rows) + 2 for scenario in scenarios)
    figure, axes_list = pyplot.subplots(len(scenarios), 1, figsize=(9, height), squeeze=False)
    for axes, scenario in zip(axes_list[:, 0], scenarios):
        metric, axis_label = PLOT_METRICS.get(scenario.name, PLOT_METRICS["overhead"])
        labels = [row.label for row in scenario.rows]
        values = [_finite_or_zero(row.metrics.get(metric)) for row in scenario.rows]
        colours = [
            "tab:orange" if row.key.startswith("pgpool") else "tab:blue" for row in scenario.rows
        ]
        axes.barh(labels, values, color=colours)
        axes.invert_yaxis()
        # Wrapped: the title starts where the bars do, right of the pool names, and a long
        # description (contention's) ran off the figure.
        title = textwrap.fill(f"{scenario.name}: {scenario.description}", width=80)
        axes.set_title(title, fontsize=9, loc="left")
        axes.set_xlabel(axis_label, fontsize=8)
        axes.tick_params(labelsize=8)
    figure.suptitle("\n".join(title_lines), fontsize=9)
    figure.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - 0.5 / height))
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def _finite_or_zero(value: Optional[float]) -> float:
    return value if value is not None and math.isfinite(value) else 0.0
