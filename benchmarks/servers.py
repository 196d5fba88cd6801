"""Server processes under test: start, wait until healthy, measure CPU and RSS, stop."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil

from benchmarks.apps import NO_KEEPALIVE_SECONDS
from benchmarks.peer_venvs import ensure_venv
from benchmarks.targets import Target
from tools.ports import free_port
from tools.processes import (
    has_workers,
    process_tree,
    raise_open_files_limit,
    started,
    uvicorn_command,
)

STARTUP_TIMEOUT = 60.0
#: BENCH_KEEP_LOGS=1 keeps each server's log file (its path is in error messages).
KEEP_LOGS = os.environ.get("BENCH_KEEP_LOGS") == "1"

#: pid -> (user seconds, system seconds, on-CPU seconds from schedstat or None).
CpuSnapshot = dict[int, tuple[float, float, float | None]]


def on_cpu_seconds(pid: int) -> float | None:
    """Seconds the process's threads ran, from ``/proc/<pid>/task/*/schedstat`` (which
    counts nanoseconds); None where the kernel does not say. ``cpu_times()`` counts 10 ms
    clock ticks, which at a few µs per delivery is ±30% of a burst: too coarse for ratios
    near 1."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    total = 0
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                total += int(stat.read().split()[0])
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        except (OSError, ValueError, IndexError):
            return None
    return total / 1e9


@dataclass
class CpuDelta:
    """CPU of a process tree over a measurement: ``user`` and ``system`` from clock ticks,
    ``on_cpu`` (their sum, precise) from schedstat where the kernel gives it."""

    user: float
    system: float
    on_cpu: float | None = None

    @property
    def total(self) -> float:
        return self.on_cpu if self.on_cpu is not None else self.user + self.system

    def split(self) -> tuple[float, float]:
        """User and system seconds, scaled so that they add up to :attr:`total` (the split
        comes from clock ticks; the sum is the precise figure)."""
        ticks = self.user + self.system
        if self.on_cpu is None or ticks <= 0:
            return self.user, self.system
        return self.on_cpu * self.user / ticks, self.on_cpu * self.system / ticks


class RunningServer:
    """A started server process tree (uvicorn master and workers, or one process)."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: str) -> None:
        self.process = process
        self.port = port
        self.log_path = log_path
        self.root = psutil.Process(process.pid)

    def log_tail(self, lines: int = 3) -> str:
        """The last lines the server wrote (its stdout and stderr go to a log file)."""
        return log_tail(self.log_path, lines)

    def processes(self) -> list[psutil.Process]:
        return process_tree(self.root.pid)

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
                on_cpu_seconds(proc.pid),
            )
        return snapshot

    @staticmethod
    def cpu_delta(before: CpuSnapshot, after: CpuSnapshot) -> CpuDelta:
        user = system = 0.0
        on_cpu: float | None = 0.0
        for pid, (u1, s1, c1) in after.items():
            u0, s0, c0 = before.get(pid, (0.0, 0.0, 0.0))
            user += u1 - u0
            system += s1 - s0
            if on_cpu is not None and c1 is not None and c0 is not None:
                on_cpu += c1 - c0
            else:
                on_cpu = None
        return CpuDelta(user, system, on_cpu)

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


KEEPALIVE_NOTE = (
    "Keepalive pings are off in every server: 1,000 connections opened together ping "
    "together every 20 s (websockets' and uvicorn's default), a burst of about 50 ms of CPU "
    "that fell into some 2-second steady windows and not others (±30% on every system)."
)


def server_command(target: Target, port: int) -> list[str]:
    """The server's command line, on its peer venv's python if it has one."""
    command = _driver_command(target, port)
    if target.venv is not None:
        command[0] = str(ensure_venv(target.venv))
    return command


def _driver_command(target: Target, port: int) -> list[str]:
    if target.asgi_app is None:
        if target.module is None:
            raise ValueError(f"{target.name}: neither an ASGI app nor a module")
        return [sys.executable, "-m", target.module, "--port", str(port), *target.module_args]
    return uvicorn_command(
        f"benchmarks.apps.{target.asgi_app}:app",
        port,
        target.workers,
        *("--no-access-log", "--backlog", "4096"),
        # No keepalive pings while measuring (see KEEPALIVE_NOTE).
        *("--ws-ping-interval", str(NO_KEEPALIVE_SECONDS)),
        *(["--ws", target.ws_protocol] if target.ws_protocol else []),
    )


def log_tail(path: str, lines: int = 3) -> str:
    """The last ``lines`` of the log file at ``path``, on one line."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        return " | ".join(line.strip() for line in handle.readlines()[-lines:])


@contextmanager
def running_server(target: Target, env: dict[str, str]) -> Iterator[RunningServer]:
    """Start ``target``; yield once it answers ``/healthz`` with all its workers; always stop."""
    port = free_port()
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in finally)
        prefix=f"bench-{target.name}-", suffix=".log", delete=False
    )
    try:
        with started(
            server_command(target, port),
            f"http://127.0.0.1:{port}/healthz",
            env=env,
            name=target.name,
            timeout=STARTUP_TIMEOUT,
            ready=has_workers(target.workers),
            details=lambda process: (
                f"{len(process_tree(process.pid))} processes; {log_tail(log.name)}"
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=raise_open_files_limit,
        ) as process:
            if target.workers > 1:
                time.sleep(1.0)  # let every worker finish its lifespan startup
            yield RunningServer(process, port, log.name)
    finally:
        log.close()
        if not KEEP_LOGS:
            os.unlink(log.name)
