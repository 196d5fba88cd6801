"""``python -m benchmarks`` without the [bench] extra says so in one line and stops."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_benchmarks_stop_at_once_with_one_line_without_the_bench_extra() -> None:
    # -S: no site-packages, so none of the extra's packages can be found.
    done = subprocess.run(
        [sys.executable, "-S", "-m", "benchmarks", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "[bench]" in lines[0]
    assert "rich" in lines[0]


def test_the_storm_runs_only_when_named_with_its_own_number_of_clients() -> None:
    from benchmarks.plan import FULL, QUICK
    from benchmarks.storm import CLIENTS_PER_PROCESS, client_processes
    from benchmarks.targets import by_name

    assert (FULL.storm_clients, QUICK.storm_clients) == (10_000, 1000)
    assert "storm" in FULL.explicit_only and "storm" in QUICK.explicit_only
    for name in FULL.storm_targets:
        by_name(name)
    # Several client processes, each far below the 20,000 open files a process may hold.
    assert client_processes(10_000) >= 4
    assert CLIENTS_PER_PROCESS * 4 < 20_000


def test_the_storm_targets_are_checked_on_the_worse_reconnect_round() -> None:
    from benchmarks.storm_report import evaluate_storm_goals

    def rounds(**figures: float | None) -> dict[str, float | None]:
        return {
            f"{name}_{key}": value
            for name in ("connect", "reconnect1", "reconnect2")
            for key, value in figures.items()
        }

    summary = {
        "storm-300": {
            "fastapi-loop": {"clients": 300.0, **rounds(cpu_ms=0.5, refused=0.0)},
            "ours-redis-2w": {
                "clients": 300.0,
                **rounds(cpu_ms=0.55, refused=0.0),
                "reconnect2_cpu_ms": 0.7,
            },
            "ours-redis-2w-count": {
                "clients": 300.0,
                **rounds(cpu_ms=0.9, refused=3.0, count_frames_max=90.0),
                "reconnect1_settle_after_handshakes_s": 0.5,
                "reconnect2_settle_after_handshakes_s": None,  # never settled
            },
        }
    }
    goals = {(row["goal"], row["system"]): row for row in evaluate_storm_goals(summary)}
    plain = goals[("server CPU/conn ÷ bare FastAPI, no count hook", "ours-redis-2w")]
    assert plain["value"] == 0.7 / 0.5 and plain["met"] is False
    assert goals[("no client refused", "ours-redis-2w")]["met"] is True
    assert goals[("no client refused", "ours-redis-2w-count")]["met"] is False
    count_cpu = goals[("server CPU/conn ÷ bare FastAPI, count hook", "ours-redis-2w-count")]
    assert count_cpu["met"] is True
    settle = goals[("every count right, s after the last handshake", "ours-redis-2w-count")]
    assert settle["value"] is None and settle["met"] is False
    frames = goals[("count frames per client (max)", "ours-redis-2w-count")]
    assert frames["value"] == 90.0 and frames["met"] is False


def test_a_count_frame_is_read_without_decoding_it() -> None:
    from benchmarks.storm_clients import count_of

    assert count_of('{"num_connected_clients":1000}') == 1000
    assert count_of('{"num_connected_clients": 7}') == 7
    assert count_of('{"sent_us":1,"seq":2}') is None


def test_a_storm_needs_at_least_one_client() -> None:
    # Without the [bench] extra too (the suite's own install lacks it): the rule itself.
    from benchmarks.plan import clients_count

    assert clients_count("10_000") == 10_000
    with pytest.raises(argparse.ArgumentTypeError, match="at least 1 client, not 0"):
        clients_count("0")


def test_the_storm_clients_option_takes_a_positive_number() -> None:
    # The whole command line, where the [bench] extra is installed (it checks it first).
    pytest.importorskip("rich")
    pytest.importorskip("socketio")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--scenario", "storm", "--storm-clients", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "--storm-clients: at least 1 client" in done.stderr
    assert "Traceback" not in done.stderr
