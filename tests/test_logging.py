"""The library's log lines carry a time and a level, once, under uvicorn and gunicorn."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 30.0
POLL_INTERVAL = 0.05


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_until_healthy_then_stop(command: list[str], port: int, env: dict[str, str]) -> str:
    """Run ``command`` until the demo's /healthz answers, stop it, return its stderr."""
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            assert process.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "the server did not answer /healthz"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).is_success:
                    break
            except httpx.TransportError:
                time.sleep(POLL_INTERVAL)  # not listening yet: poll again
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    return stderr


@pytest.fixture
def unknown_variable() -> str:
    """A PUBSUB_ variable the library does not know: each process warns about it once."""
    return f"PUBSUB_ZZ_LOGGING_TEST_{uuid.uuid4().hex[:8].upper()}"


def lines_about(stderr: str, variable: str) -> list[str]:
    return [line for line in stderr.splitlines() if variable in line]


@pytest.mark.slow
def test_under_uvicorn_configure_logging_prints_one_line_with_time_and_level(
    unknown_variable: str,
) -> None:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "tests.apps.logging_app:app"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, unknown_variable: "1"}
    lines = lines_about(serve_until_healthy_then_stop(command, port, env), unknown_variable)
    assert len(lines) == 1, lines
    assert re.match(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[\d+\] \[WARNING\] fastapi_pubsub_cluster: ",
        lines[0],
    ), lines[0]


@pytest.mark.slow
def test_under_gunicorn_the_worker_class_prints_one_line_in_gunicorns_format(
    unknown_variable: str,
) -> None:
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "-c", "examples/gunicorn.conf.py"]
    command += ["fastapi_pubsub_cluster.demo.asgi:app"]
    env = {
        **os.environ,
        unknown_variable: "1",
        "WEB_CONCURRENCY": "1",
        "BIND": f"127.0.0.1:{port}",
    }
    lines = lines_about(serve_until_healthy_then_stop(command, port, env), unknown_variable)
    assert len(lines) == 1, lines
    assert re.match(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [^]]*\] \[\d+\] \[WARNING\] ", lines[0]), (
        lines[0]
    )
