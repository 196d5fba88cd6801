"""Server processes under test: start, wait until healthy, measure CPU and RSS, stop."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil

from benchmarks.limits import raise_open_files_limit
from benchmarks.redis_server import free_port
from benchmarks.targets import Target

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STARTUP_TIMEOUT = 60.0
#: BENCH_KEEP_LOGS=1 keeps each server's log file (its path is in error messages).
KEEP_LOGS = os.environ.get("BENCH_KEEP_LOGS") == "1"

CpuSnapshot = dict[int, tuple[float, float]]


@dataclass
class CpuDelta:
    user: float
    system: float

    @property
    def total(self) -> float:
        return self.user + self.system


class RunningServer:
    """A started server process tree (uvicorn master and workers, or one process)."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: str) -> None:
        self.process = process
        self.port = port
        self.log_path = log_path
        self.root = psutil.Process(process.pid)

    def log_tail(self, lines: int = 3) -> str:
        """The last lines the server wrote (its stdout and stderr go to a log file)."""
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return " | ".join(line.strip() for line in handle.readlines()[-lines:])

    def processes(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_snapshot(self) -> CpuSnapshot:
        """User and system CPU seconds of every live process of the tree."""
        snapshot: CpuSnapshot = {}
        for proc in self.processes():
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            snapshot[proc.pid] = (
                times.user + times.children_user,
                times.system + times.children_system,
            )
        return snapshot

    @staticmethod
    def cpu_delta(before: CpuSnapshot, after: CpuSnapshot) -> CpuDelta:
        user = system = 0.0
        for pid, (u1, s1) in after.items():
            u0, s0 = before.get(pid, (0.0, 0.0))
            user += u1 - u0
            system += s1 - s0
        return CpuDelta(user, system)

    def rss_bytes(self) -> int:
        total = 0
        for proc in self.processes():
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def worker_count(self) -> int:
        return len(self.processes())


def _command(target: Target, port: int) -> list[str]:
    if target.asgi_app is None:
        if target.module is None:
            raise ValueError(f"{target.name}: neither an ASGI app nor a module")
        return [sys.executable, "-m", target.module, "--port", str(port)]
    return [
        sys.executable,
        "-m",
        "uvicorn",
        f"benchmarks.apps.{target.asgi_app}:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(target.workers),
        "--log-level",
        "warning",
        "--no-access-log",
        "--backlog",
        "4096",
        *(["--ws", target.ws_protocol] if target.ws_protocol else []),
    ]


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def running_server(target: Target, env: dict[str, str]) -> Iterator[RunningServer]:
    """Start ``target``; yield once it answers ``/healthz`` with all its workers; always stop."""
    port = free_port()
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in finally)
        prefix=f"bench-{target.name}-", suffix=".log", delete=False
    )
    process = subprocess.Popen(
        _command(target, port),
        cwd=ROOT,
        env={**os.environ, **env},
        preexec_fn=raise_open_files_limit,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = RunningServer(process, port, log.name)
    try:
        expected = target.workers + 1 if target.workers > 1 else 1
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not (_healthy(port) and server.worker_count() >= expected):
            if process.poll() is not None:
                raise RuntimeError(
                    f"{target.name} exited with {process.returncode}: {server.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{target.name} did not come up in {STARTUP_TIMEOUT}s "
                    f"({server.worker_count()} processes): {server.log_tail()}"
                )
            time.sleep(0.1)
        if target.workers > 1:
            time.sleep(1.0)  # let every worker finish its lifespan startup
        yield server
    finally:
        _stop(process)
        log.close()
        if not KEEP_LOGS:
            os.unlink(log.name)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
