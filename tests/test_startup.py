"""Misconfiguration stops startup with one line that says what to fix, as a new user meets it."""

from __future__ import annotations

import os
import subprocess
import sys

from tools.ports import free_port
from tools.processes import ROOT


def start(app: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``uvicorn app`` (one worker) until it exits by itself."""
    command = [sys.executable, "-m", "uvicorn", app, "--port", str(free_port())]
    return subprocess.run(
        command,
        cwd=ROOT,
        env={**_base_env(), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PUBSUB_")}


def test_a_bad_setting_stops_a_seed_style_app_with_one_line() -> None:
    done = start("examples.connected_clients:app", {"PUBSUB_CLOSE_CLIENTS_ON_RECONNECT": "ture"})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert (
        "PUBSUB_CLOSE_CLIENTS_ON_RECONNECT='ture' is invalid: allowed values are true, false"
        in done.stderr
    )


def test_an_unreachable_redis_stops_an_app_with_a_lifespan_naming_url_and_setting() -> None:
    url = f"redis://user:hunter2@127.0.0.1:{free_port()}/0"
    done = start(
        "tests.apps.cluster_app:app", {"PUBSUB_REDIS_URL": url, "PUBSUB_REDIS_TIMEOUT": "0.5"}
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if "could not start" in line]
    assert len(lines) == 1, done.stderr
    assert "PUBSUB_REDIS_URL" in lines[0] and f"127.0.0.1:{url.rsplit(':', 1)[1]}" in lines[0]
    assert "hunter2" not in done.stderr
    assert "Application startup failed" in done.stderr
