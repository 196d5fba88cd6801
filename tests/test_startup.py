"""Misconfiguration stops startup with one line that says what to fix, as a new user meets it:
under one uvicorn process, under `uvicorn --workers N` and under gunicorn with N workers, the
whole server stops at once (never a loop of workers restarted forever)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tools.ports import free_port
from tools.processes import ROOT

BAD_SETTING = {"PUBSUB_CLOSE_CLIENTS_ON_RECONNECT": "ture"}
BAD_SETTING_LINE = "PUBSUB_CLOSE_CLIENTS_ON_RECONNECT='ture' is invalid"
# A server that restarts its workers forever never exits: each case is bounded by this.
STOPS_WITHIN = 20.0


def start(
    app: str, env: dict[str, str], timeout: float = 30, *server: str
) -> subprocess.CompletedProcess[str]:
    """Run ``uvicorn app`` (one worker unless ``server`` gives another command, e.g.
    gunicorn's) until it exits by itself; a server still running after ``timeout`` is killed
    with all its workers and fails the test."""
    command = list(server) or [sys.executable, "-m", "uvicorn", app, "--port", str(free_port())]
    with subprocess.Popen(
        command,
        cwd=ROOT,
        env={**_base_env(), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            pytest.fail(f"still running after {timeout}s:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PUBSUB_")}


def test_a_bad_setting_stops_an_original_style_app_with_one_line() -> None:
    done = start("examples.connected_clients:app", BAD_SETTING)
    assert done.returncode == 3  # uvicorn's and gunicorn's "failed to start"
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
    assert "Traceback" not in done.stderr  # one line says it all; the traceback is debug


def uvicorn_workers(app: str, workers: int) -> list[str]:
    port = str(free_port())
    return [sys.executable, "-m", "uvicorn", app, "--port", port, "--workers", str(workers)]


def gunicorn_workers(app: str, workers: int) -> list[str]:
    bind = f"127.0.0.1:{free_port()}"
    worker_class = "fastapi_pubsub_cluster.servers.gunicorn_worker.PubSubUvicornWorker"
    return [
        sys.executable,
        "-m",
        "gunicorn",
        app,
        "-w",
        str(workers),
        "-b",
        bind,
        "-k",
        worker_class,
    ]


SERVERS = {"uvicorn --workers 4": uvicorn_workers, "gunicorn -w 4": gunicorn_workers}


@pytest.mark.slow
@pytest.mark.parametrize("server", SERVERS)
def test_a_bad_setting_stops_a_server_of_four_workers_once(server: str) -> None:
    app = "tests.apps.cluster_app:app"
    done = start(app, BAD_SETTING, STOPS_WITHIN, *SERVERS[server](app, 4))
    lines = [line for line in done.stderr.splitlines() if BAD_SETTING_LINE in line]
    assert 1 <= len(lines) <= 4, done.stderr  # once per worker at most, never a restart loop
    assert "Traceback" not in done.stderr
    if server.startswith("gunicorn"):
        assert done.returncode != 0
    # uvicorn's supervisor ends with status 0 whatever its workers' (uvicorn's own choice);
    # what the library decides is that it stops at once, which `start` bounds.


@pytest.mark.slow
@pytest.mark.parametrize("server", SERVERS)
def test_an_unreachable_redis_stops_a_server_of_two_workers(server: str) -> None:
    app = "tests.apps.cluster_app:app"
    env = {"PUBSUB_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "PUBSUB_REDIS_TIMEOUT": "0.5"}
    done = start(app, env, STOPS_WITHIN, *SERVERS[server](app, 2))
    lines = [line for line in done.stderr.splitlines() if "could not start" in line]
    assert 1 <= len(lines) <= 2, done.stderr
    assert "Traceback" not in done.stderr
    if server.startswith("gunicorn"):
        assert done.returncode != 0


@pytest.mark.slow
@pytest.mark.parametrize("server", ["gunicorn -w 2", "uvicorn --ws"])
def test_a_bad_compression_stops_an_original_style_app_before_it_accepts_a_socket(
    server: str,
) -> None:
    # The original package's example builds no hub at import: the protocol's setting must stop it.
    app = "examples.connected_clients:app"
    if server.startswith("gunicorn"):
        command = gunicorn_workers(app, 2)
    else:
        protocol = "fastapi_pubsub_cluster.servers.uvicorn_ws:PubSubWebSocketProtocol"
        command = [*uvicorn_workers(app, 1)[:-2], "--ws", protocol]
    done = start(app, {"PUBSUB_COMPRESSION": "bogus"}, STOPS_WITHIN, *command)
    lines = [line for line in done.stderr.splitlines() if "PUBSUB_COMPRESSION='bogus'" in line]
    assert 1 <= len(lines) <= 2, done.stderr
    assert "allowed values are 'shared', 'per-socket', 'off'" in lines[0]
    assert "Traceback" not in done.stderr
    assert done.returncode == 3, done.stderr
