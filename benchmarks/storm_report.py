"""The storm scenario's tables and targets (``benchmarks.storm``)."""

from __future__ import annotations

from typing import Any

from benchmarks.metrics import ratio
from benchmarks.storm import ROUNDS

#: Every ratio of the storm is taken to this system's figure of the same round.
FLOOR = "fastapi-loop"
RECONNECTS = tuple(name for name in ROUNDS if name != "connect")
OURS_PLAIN = ("ours-redis-2w", "ours-redis-2w-direct")
OURS_COUNT = ("ours-redis-2w-count", "ours-redis-2w-direct-count")

#: The targets (issue 30), stated for 10,000 clients reconnecting at once to 2 workers on
#: one Redis, each checked on the worse of the two reconnect rounds: (goal, figure, systems,
#: bound, divided by FLOOR's figure).
STORM_GOALS: tuple[tuple[str, str, tuple[str, ...], float, bool], ...] = (
    ("no client refused", "refused", (*OURS_PLAIN, *OURS_COUNT), 0.0, False),
    ("server CPU/conn ÷ bare FastAPI, no count hook", "cpu_ms", OURS_PLAIN, 1.2, True),
    ("server CPU/conn ÷ bare FastAPI, count hook", "cpu_ms", OURS_COUNT, 2.0, True),
    (
        "every count right, s after the last handshake",
        "settle_after_handshakes_s",
        OURS_COUNT,
        2.0,
        False,
    ),
    ("count frames per client (max)", "count_frames_max", OURS_COUNT, 50.0, False),
)

STORM_NOTES = (
    "storm: N clients connect at the same moment (several client processes, no retries), "
    "then every TCP connection is reset (SO_LINGER 0 and abort: no close frame) and all "
    "reconnect at the same moment, twice. ours and the Redis peers run 2 uvicorn workers on "
    "one Redis; websockets and bare FastAPI one process. A round runs from the clients' start "
    "until every handshake is done or refused, every admitted client has a message published "
    "after its handshake (published once all handshakes are done, again every 0.25 s until all "
    "have one) or, with the count hook, every admitted client's last count frame equals the "
    "number admitted, and the servers are quiet (no frame, under 3% of a core, for 0.5 s); "
    "server and Redis CPU over that window, per admitted client, in ms. Refused: closed by the "
    "server, HTTP refusals, timeouts and connection errors, by kind.",
)

#: (label, figure of a round, format)
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("admitted", "admitted", "{:,.0f}"),
    ("CPU ms", "cpu_ms", "{:.2f}"),
    ("user", "cpu_user_ms", "{:.2f}"),
    ("sys", "cpu_sys_ms", "{:.2f}"),
    ("Redis ms", "redis_info_cpu_ms", "{:.3f}"),
    ("hs s", "handshakes_s", "{:.2f}"),
    ("settled s", "settled_s", "{:.2f}"),
    ("after hs s", "settle_after_handshakes_s", "{:.2f}"),
    ("counts", "count_frames_mean", "{:.1f}"),
    ("max", "count_frames_max", "{:.0f}"),
)


def _format(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def refusals(figures: dict[str, Any], round_name: str) -> str:
    """``"357 (1008)"``: refused clients of a round and their kinds (close codes, HTTP
    statuses, timeouts...; the notes count each kind and give a reason)."""
    total = figures.get(f"{round_name}_refused")
    if total is None:
        return "-"
    prefix = f"{round_name}_refused_"
    kinds = [
        key.removeprefix(prefix).removeprefix("close_").replace("_", " ")
        for key, value in figures.items()
        if key.startswith(prefix) and not key.endswith(".spread") and value
    ]
    return f"{total:.0f}" + (f" ({', '.join(kinds)})" if kinds else "")


def storm_table(
    scenario: str, rows: dict[str, dict[str, Any]], order: list[str]
) -> tuple[str, list[str], list[list[str]]]:
    """One row per system and round, CPU also as a ratio to bare FastAPI's same round."""
    header = ["system", "round", "refused", *(label for label, _, _ in COLUMNS[:2]), "÷fastapi"]
    header += [label for label, _, _ in COLUMNS[2:]]
    body: list[list[str]] = []
    for name in order:
        figures = rows[name]
        for round_name in ROUNDS:
            if f"{round_name}_admitted" not in figures:
                continue
            cells = [_format(figures.get(f"{round_name}_{key}"), fmt) for _, key, fmt in COLUMNS]
            floor = rows.get(FLOOR, {}).get(f"{round_name}_cpu_ms")
            versus = _format(ratio(figures.get(f"{round_name}_cpu_ms"), floor), "{:.2f}")
            body.append([name, round_name, refusals(figures, round_name), *cells[:2], versus])
            body[-1] += cells[2:]
    title = (
        f"{scenario}: everyone at once, then reset and reconnecting at once, twice. Server "
        "CPU ms per admitted client (user, sys) and ÷ bare FastAPI's same round; Redis CPU ms "
        "per admitted client (INFO); seconds from the start to the last handshake (hs), until "
        "settled, and from the last handshake until settled; count frames per client, mean, max"
    )
    return title, header, body


def evaluate_storm_goals(summary: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each target of STORM_GOALS for every storm scenario run: the worse reconnect round's
    figure, its bound, met or not (None when the system did not run)."""
    results: list[dict[str, Any]] = []
    for scenario in sorted(s for s in summary if s.startswith("storm-")):
        rows = summary[scenario]
        for goal, key, systems, bound, relative in STORM_GOALS:
            for system in systems:
                if system not in rows:
                    continue
                figures = rows[system]
                values = []
                for round_name in RECONNECTS:
                    value = figures.get(f"{round_name}_{key}")
                    if relative:
                        value = ratio(value, rows.get(FLOOR, {}).get(f"{round_name}_{key}"))
                    values.append(value)
                present = [v for v in values if v is not None]
                worst = max(present) if len(present) == len(values) else None
                comparable = not relative or FLOOR in rows
                results.append(
                    {
                        "scenario": scenario,
                        "goal": goal,
                        "system": system,
                        "clients": figures.get("clients"),
                        "value": worst,
                        "by_round": dict(zip(RECONNECTS, values, strict=True)),
                        "bound": bound,
                        "met": (worst is not None and worst <= bound) if comparable else None,
                    }
                )
    return results


def goals_table(goals: list[dict[str, Any]]) -> tuple[str, list[str], list[list[str]]] | None:
    if not goals:
        return None
    body = [
        [
            row["goal"],
            row["system"],
            _format(row["clients"], "{:,.0f}"),
            _format(row["value"], "{:.2f}"),
            f"≤{row['bound']:g}",
            {True: "met", False: "NOT met", None: "-"}[row["met"]],
        ]
        for row in goals
    ]
    title = (
        "Storm targets (stated for 10,000 clients, 2 workers, one Redis; the worse reconnect "
        "round; a count that never settled shows '-' and is not met)"
    )
    return title, ["target", "system", "clients", "value", "bound", ""], body
