"""Medians, spreads and ratios of the measurements; printed as tables and written as JSON."""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from benchmarks.metrics import median, ratio, spread
from benchmarks.regimes import evaluate_regimes
from benchmarks.scenarios import Measurement
from benchmarks.storm_report import evaluate_storm_goals, goals_table, storm_table
from benchmarks.targets import CEILINGS, KNOWN_TARGETS, REFERENCE, Role, by_name

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

Summary = dict[str, dict[str, dict[str, Any]]]  # scenario -> target -> figures

#: Columns of the headline table: (label, key in the summary, format).
HEADLINE: tuple[tuple[str, str, str], ...] = (
    ("user µs", "burst_cpu_user_us", "{:.1f}"),
    ("sys µs", "burst_cpu_sys_us", "{:.1f}"),
    ("CPU µs/dlv", "burst_cpu_us", "{:.1f}"),
    ("dlv/s", "burst_deliveries_per_s", "{:,.0f}"),
    ("p50 @2/s", "light2_p50_ms", "{:.1f}"),
    ("p99 @2/s", "light2_p99_ms", "{:.1f}"),
    ("p50 @10/s", "steady10_p50_ms", "{:.1f}"),
    ("p99 @10/s", "steady10_p99_ms", "{:.1f}"),
    ("KiB/conn", "rss_kib_per_conn", "{:.1f}"),
    ("cmds/bcast", "burst_redis_cmds_per_broadcast", "{:.2f}"),
    ("lost", "burst_lost", "{:.0f}"),
)

#: Scenario name prefix -> its own columns (replacing HEADLINE's).
SCENARIO_COLUMNS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "cluster-": (
        ("user µs", "burst_cpu_user_us", "{:.1f}"),
        ("sys µs", "burst_cpu_sys_us", "{:.1f}"),
        ("CPU µs/dlv", "burst_cpu_us", "{:.1f}"),
        ("dlv/s", "burst_deliveries_per_s", "{:,.0f}"),
        ("cmds/bcast", "burst_redis_cmds_per_broadcast", "{:.2f}"),
        ("Redis µs/bc", "burst_redis_cpu_us_per_broadcast", "{:.1f}"),
        ("max node", "burst_redis_max_node_share", "{:.0%}"),
        ("Redis/bc INFO", "burst_redis_info_cpu_us_per_broadcast", "{:.1f}"),
        ("max node INFO", "burst_redis_info_max_node_share", "{:.0%}"),
        ("lost", "burst_lost", "{:.0f}"),
    ),
    "history-": (
        ("p50 @2/s", "light2_p50_ms", "{:.1f}"),
        ("p99 @2/s", "light2_p99_ms", "{:.1f}"),
        ("p50 @10/s", "steady10_p50_ms", "{:.1f}"),
        ("p99 @10/s", "steady10_p99_ms", "{:.1f}"),
        ("user µs", "burst_cpu_user_us", "{:.1f}"),
        ("sys µs", "burst_cpu_sys_us", "{:.1f}"),
        ("CPU µs/dlv", "burst_cpu_us", "{:.1f}"),
        ("Redis µs/bc", "burst_redis_cpu_us_per_broadcast", "{:.1f}"),
        ("Redis/bc INFO", "burst_redis_info_cpu_us_per_broadcast", "{:.1f}"),
        ("store Redis/msg", "store_redis_info_cpu_us_per_broadcast", "{:.1f}"),
        ("stored", "store_stream_entries", "{:.0f}"),
        ("KiB/1k mem", "store_used_memory_kib_per_1000_published", "{:.1f}"),
        ("KiB/1k stream", "store_stream_kib_per_1000", "{:.1f}"),
        ("lost", "burst_lost", "{:.0f}"),
    ),
}
SCENARIO_COLUMNS["channels-"] = (
    ("user µs", "burst_cpu_user_us", "{:.1f}"),
    ("sys µs", "burst_cpu_sys_us", "{:.1f}"),
    ("CPU µs/dlv", "burst_cpu_us", "{:.1f}"),
    ("dlv/s", "burst_deliveries_per_s", "{:,.0f}"),
    ("steady µs/dlv", "steady_cpu_us", "{:.1f}"),
    ("steady p50", "steady_p50_ms", "{:.1f}"),
    ("steady p99", "steady_p99_ms", "{:.1f}"),
    ("cmds/bcast", "burst_redis_cmds_per_broadcast", "{:.2f}"),
    ("lost", "burst_lost", "{:.0f}"),
)
SCENARIO_COLUMNS["deflate"] = (
    ("user µs", "burst_cpu_user_us", "{:.1f}"),
    ("sys µs", "burst_cpu_sys_us", "{:.1f}"),
    ("CPU µs/dlv", "burst_cpu_us", "{:.1f}"),
    ("dlv/s", "burst_deliveries_per_s", "{:,.0f}"),
    ("wire B/dlv", "burst_wire_bytes_per_dlv", "{:,.0f}"),
    ("lost", "burst_lost", "{:.0f}"),
)
SCENARIO_COLUMNS["publish-"] = (
    ("publish/s", "publish_per_s", "{:,.0f}"),
    ("failed calls", "publish_failed", "{:.0f}"),
    ("CPU µs/publish", "publish_cpu_us", "{:.1f}"),
)
#: Scenario name prefix -> (numerator target, denominator target, what the ratio says):
#: a table of every shared figure as numerator / denominator, measured in the same run.
COMPARISONS: dict[str, tuple[str, str, str]] = {
    "cluster-": ("ours-cluster-2w", "ours-redis-2w", "3-shard cluster ÷ one Redis"),
    "history-": ("ours-redis-history-1w", "ours-redis-1w", "history on ÷ off"),
}


def columns_for(scenario: str) -> tuple[tuple[str, str, str], ...]:
    for prefix, columns in SCENARIO_COLUMNS.items():
        if scenario.startswith(prefix):
            return columns
    return HEADLINE


def summarize(measurements: Sequence[Measurement]) -> Summary:
    """Median and spread of every figure over the repeats of each configuration."""
    grouped: dict[tuple[str, str], list[Measurement]] = defaultdict(list)
    for measurement in measurements:
        grouped[(measurement.scenario, measurement.target)].append(measurement)
    summary: Summary = defaultdict(dict)
    for (scenario, target), runs in grouped.items():
        keys = sorted({key for run in runs for key in run.values})
        figures: dict[str, Any] = {
            "runs": len(runs),
            "errors": [run.error for run in runs if run.error],
        }
        for key in keys:
            values = [run.values.get(key) for run in runs if run.error is None]
            figures[key] = median(values)
            figures[f"{key}.spread"] = spread(values)
        summary[scenario][target] = figures
    return dict(summary)


def ratios(summary: Summary, scenario: str, key: str) -> dict[str, dict[str, float | None]]:
    """``key`` of every target divided by the same figure of every other target."""
    rows = summary.get(scenario, {})
    return {
        mine: {theirs: ratio(rows[mine].get(key), rows[theirs].get(key)) for theirs in rows}
        for mine in rows
    }


def headline_scenario(summary: Summary) -> str | None:
    fanouts = [s for s in summary if s.startswith("fanout-")]
    preferred = "fanout-1000"
    if preferred in summary:
        return preferred
    # Otherwise the largest size run (a quick run has only one).
    return max(fanouts, key=lambda s: int(s.split("-")[1]), default=None)


def with_idle_memory(summary: Summary, scenario: str) -> dict[str, dict[str, Any]]:
    """The scenario's rows, memory per connection taken from the largest idle run if any."""
    rows = {target: dict(figures) for target, figures in summary.get(scenario, {}).items()}
    idle = sorted((s for s in summary if s.startswith("idle-")), key=lambda s: int(s.split("-")[1]))
    for target, figures in rows.items():
        for idle_scenario in reversed(idle):
            value = summary[idle_scenario].get(target, {}).get("rss_kib_per_conn")
            if value is not None:
                figures["rss_kib_per_conn"] = value
                figures["rss_source"] = idle_scenario
                break
    return rows


def build_report(
    plan: str,
    measurements: Sequence[Measurement],
    environment: dict[str, Any],
    duration: float,
    notes: Sequence[str],
) -> dict[str, Any]:
    summary = summarize(measurements)
    headline = headline_scenario(summary)
    ratio_tables: dict[str, Any] = {}
    for scenario in summary:
        ratio_tables[scenario] = {
            key: ratios(summary, scenario, key)
            for key in (
                "burst_cpu_us",
                "burst_cpu_user_us",
                "burst_deliveries_per_s",
                "light2_p50_ms",
                "steady10_p50_ms",
                "rss_kib_per_conn",
            )
        }
    return {
        "plan": plan,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": round(duration, 1),
        "environment": environment,
        "reference": REFERENCE,
        "ceilings": list(CEILINGS),
        "targets": {
            t.name: {
                "role": t.role.value,
                "description": t.description,
                "workers": t.workers,
                "publish_via": t.publish_via.value,
                "workarounds": list(t.workarounds),
            }
            for t in KNOWN_TARGETS
        },
        "notes": list(notes),
        "headline_scenario": headline,
        "headline": with_idle_memory(summary, headline) if headline else {},
        "summary": summary,
        "ratios": ratio_tables,
        "regimes": evaluate_regimes(summary, measurements),
        "storm_goals": evaluate_storm_goals(summary),
        "measurements": [asdict(m) for m in measurements],
    }


def write_report(report: dict[str, Any]) -> str:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    path = os.path.join(RESULTS_DIR, f"{stamp}-{report['plan']}.json")
    text = json.dumps(report, indent=2, sort_keys=False)
    for destination in (path, os.path.join(RESULTS_DIR, "latest.json")):
        with open(destination, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    return path


def show_results(results: dict[str, Any], path: str | None) -> None:
    """Print a side benchmark's results as JSON, and write them to ``path`` if given."""
    text = json.dumps(results, indent=2)
    print(text)
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")


def _cell(value: Any, fmt: str, spread_value: Any = None) -> str:
    if value is None:
        return "-"
    text = fmt.format(value)
    if spread_value is not None and spread_value >= 0.14:
        text += f" ±{spread_value * 50:.0f}%"
    return text


def _order(names: Sequence[str]) -> list[str]:
    known = [t.name for t in KNOWN_TARGETS if t.name in names]
    return known + sorted(set(names) - set(known))


def tables(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for every table to print."""
    result: list[tuple[str, list[str], list[list[str]]]] = []
    headline = report["headline_scenario"]
    if headline:
        rows = report["headline"]
        header = ["system", *(label for label, _, _ in HEADLINE), "÷ws", "÷fastapi"]
        body = []
        for name in _order(list(rows)):
            figures = rows[name]
            cells = [
                _cell(figures.get(key), fmt, figures.get(f"{key}.spread"))
                for _, key, fmt in HEADLINE
            ]
            for ceiling in CEILINGS:
                value = ratio(
                    figures.get("burst_cpu_us"), rows.get(ceiling, {}).get("burst_cpu_us")
                )
                cells.append(_cell(value, "{:.2f}"))
            body.append([name, *cells])
        result.append(
            (
                f"{headline}: one channel. CPU per delivery in a burst (µs); latency ms at "
                "2 and 10 msg/s; memory per idle connection; CPU ÷ each ceiling",
                header,
                body,
            )
        )
        cpu = report["ratios"][headline]["burst_cpu_us"]
        others = [n for n in _order(list(rows)) if by_name_role(n) != Role.OURS]
        ours = [n for n in _order(list(rows)) if by_name_role(n) == Role.OURS]
        if others and ours:
            body = [[mine, *(_cell(cpu[mine].get(o), "{:.2f}") for o in others)] for mine in ours]
            result.append(
                (
                    f"{headline}: CPU per delivery, ours / theirs (<1: we spend less)",
                    ["ours", *others],
                    body,
                )
            )
    for scenario in sorted(report["summary"]):
        if scenario == headline:
            continue
        rows = report["summary"][scenario]
        if scenario.startswith("storm-"):
            result.append(storm_table(scenario, rows, _order(list(rows))))
            continue
        keys = [
            (label, key, fmt)
            for label, key, fmt in columns_for(scenario)
            if any(key in f for f in rows.values())
        ]
        header = ["system", *(label for label, _, _ in keys)]
        body = [
            [
                name,
                *(
                    _cell(rows[name].get(key), fmt, rows[name].get(f"{key}.spread"))
                    for _, key, fmt in keys
                ),
            ]
            for name in _order(list(rows))
        ]
        result.append((scenario, header, body))
        comparison = _comparison(scenario, rows, keys)
        if comparison is not None:
            result.append(comparison)
    regimes = regime_table(report)
    if regimes is not None:
        result.append(regimes)
    storm_goals = goals_table(report.get("storm_goals", []))
    if storm_goals is not None:
        result.append(storm_goals)
    return result


def _comparison(
    scenario: str, rows: dict[str, dict[str, Any]], keys: Sequence[tuple[str, str, str]]
) -> tuple[str, list[str], list[list[str]]] | None:
    """The scenario's pair (COMPARISONS) as ratios of their figures, if both ran."""
    for prefix, (mine, theirs, meaning) in COMPARISONS.items():
        if scenario.startswith(prefix) and mine in rows and theirs in rows:
            shown = [(label, key) for label, key, _ in keys if key != "burst_lost"]
            cells = [
                _cell(ratio(rows[mine].get(key), rows[theirs].get(key)), "{:.2f}")
                for _, key in shown
            ]
            return (
                f"{scenario}: {meaning} ({mine} / {theirs}, same run)",
                ["ratio", *(label for label, _ in shown)],
                [[f"{mine} / {theirs}", *cells]],
            )
    return None


def regime_table(report: dict[str, Any]) -> tuple[str, list[str], list[list[str]]] | None:
    """Every regime's ratio of ours to its floor (``report["regimes"]``), one row each."""
    body = [
        [
            row["regime"],
            row["scenario"],
            _cell(row["ratio"], "{:.2f}"),
            _range(row["ratio_min"], row["ratio_max"]),
            row["goal"] or "-",
            {True: "met", False: "NOT met", None: "-"}[row["met"]],
        ]
        for row in report.get("regimes", [])
    ]
    if not body:
        return None
    header = ["regime", "scenario", "ratio", "repeats", "goal", ""]
    return ("Regimes: ours ÷ its floor, same run", header, body)


def _range(low: float | None, high: float | None) -> str:
    return "-" if low is None or high is None else f"{low:.2f}-{high:.2f}"


def by_name_role(name: str) -> Role | None:
    try:
        return by_name(name).role
    except KeyError:
        return None


def print_report(report: dict[str, Any], path: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        _print_plain(report, path)
        return
    console = Console(width=max(160, Console().width))
    for title, header, body in tables(report):
        table = Table(title=title, title_justify="left")
        for index, column in enumerate(header):
            table.add_column(column, justify="left" if index == 0 else "right", no_wrap=index == 0)
        for row in body:
            table.add_row(*row)
        console.print(table)
    for line in _footer(report, path):
        console.print(line, highlight=False)


def _print_plain(report: dict[str, Any], path: str) -> None:
    for title, header, body in tables(report):
        widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
        print(f"\n{title}")
        for row in [header, *body]:
            print(
                "  ".join(str(cell).rjust(width) for cell, width in zip(row, widths, strict=True))
            )
    for line in _footer(report, path):
        print(line)


def _footer(report: dict[str, Any], path: str) -> list[str]:
    lines = ["", "Notes:"]
    lines += [f"- {note}" for note in report["notes"]]
    applied: dict[str, list[str]] = {}  # one workaround, every target that has it
    for name, target in report["targets"].items():
        for workaround in target["workarounds"]:
            applied.setdefault(workaround, []).append(name)
    lines += [f"- workaround ({', '.join(names)}): {w}" for w, names in applied.items()]
    for scenario, rows in report["summary"].items():
        for name, figures in rows.items():
            lines += [f"- ERROR {scenario} {name}: {error}" for error in figures["errors"]]
    env = report["environment"]
    versions = ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v)
    lines.append(
        f"Versions: {versions}; redis-server {env['redis_server']}; "
        f"library revision {env.get('library_revision')}"
    )
    machine = env["machine"]
    lines.append(
        f"Machine: {machine['usable_cores']} usable cores, {machine['cpu']}, "
        f"Python {machine['python']}; plan {report['plan']}, {report['duration_s']}s"
    )
    lines.append(f"JSON: {path} (and results/latest.json)")
    return lines
