"""Server processes: run a command until its health URL answers, uvicorn with N workers,
signals to a whole process tree (pause, resume, kill -9), and graceful stops."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import psutil

from tools.ports import free_port

#: The repository root: commands run from there, so ``tests.*`` and ``benchmarks.*`` import.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: How long a started server may take to answer its health URL.
STARTUP_TIMEOUT = 30.0
#: How long a terminated process may take to exit before it is killed.
STOP_TIMEOUT = 15.0


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """Whether ``url`` answers a GET with 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def process_tree(pid: int) -> list[psutil.Process]:
    """The process ``pid`` and all its descendants (empty once it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def worker_processes(pid: int) -> list[psutil.Process]:
    """The descendants of ``pid`` that serve: uvicorn's or gunicorn's workers, not
    multiprocessing's resource tracker."""
    workers = []
    for proc in process_tree(pid)[1:]:
        try:
            if "multiprocessing.resource_tracker" not in " ".join(proc.cmdline()):
                workers.append(proc)
        except psutil.Error:
            continue
    return workers


def signal_tree(pid: int, sig: int, children_first: bool = False) -> None:
    """Send ``sig`` to ``pid`` and its descendants (the root first unless ``children_first``)."""
    tree = process_tree(pid)
    for proc in reversed(tree) if children_first else tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(sig)


def pause_tree(pid: int) -> None:
    """Freeze ``pid`` and its descendants (SIGSTOP), the root first so that a supervisor does
    not see its workers hang."""
    signal_tree(pid, signal.SIGSTOP)


def resume_tree(pid: int) -> None:
    """Continue a tree ``pause_tree`` froze (SIGCONT), the workers before their supervisor."""
    signal_tree(pid, signal.SIGCONT, children_first=True)


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """``kill -9`` the process and all its descendants, and reap it."""
    signal_tree(process.pid, signal.SIGKILL)
    process.wait()


def stop(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """Stop the process gracefully: SIGTERM, SIGKILL if it has not exited within ``timeout``;
    then SIGKILL whatever of its descendants outlived it."""
    if process.poll() is not None:
        return
    tree = process_tree(process.pid)
    for proc in reversed(tree):  # a paused process could not act on SIGTERM
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGCONT)
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for child in tree[1:]:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


@dataclass
class ServerProcess:
    """A started server: its process (tree) and its base ``http://`` URL."""

    process: subprocess.Popen[bytes]
    base: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def processes(self) -> list[psutil.Process]:
        """The root process and its descendants (e.g. uvicorn's workers)."""
        return process_tree(self.process.pid)

    def worker_pids(self) -> list[int]:
        """Pids of uvicorn's workers (the root's alone when it serves by itself)."""
        return [proc.pid for proc in worker_processes(self.process.pid)] or [self.process.pid]

    def pause(self) -> None:
        pause_tree(self.process.pid)

    def resume(self) -> None:
        resume_tree(self.process.pid)

    def kill(self) -> None:
        """``kill -9`` the whole tree."""
        kill_tree(self.process)

    def stop(self) -> None:
        stop(self.process)


@contextlib.contextmanager
def started(
    command: list[str],
    health_url: str,
    *,
    env: dict[str, str] | None = None,
    name: str | None = None,
    timeout: float = STARTUP_TIMEOUT,
    ready: Callable[[subprocess.Popen[bytes]], bool] | None = None,
    details: Callable[[subprocess.Popen[bytes]], str] | None = None,
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
    preexec_fn: Callable[[], Any] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` from the repository root (environment: ours plus ``env``) until
    ``health_url`` answers 200 and ``ready(process)`` holds; yield the process; always stop
    it after (SIGTERM, then SIGKILL to it and its descendants).

    ``name`` names the command in errors, ``details(process)`` adds to them (e.g. a log's
    tail)."""
    label = name or str(command[:4])
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        preexec_fn=preexec_fn,
    )

    def extra() -> str:
        return f": {details(process)}" if details is not None else ""

    try:
        deadline = time.monotonic() + timeout
        while not (http_ok(health_url) and (ready is None or ready(process))):
            if process.poll() is not None:
                raise RuntimeError(f"{label} exited with {process.returncode}{extra()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label} did not come up within {timeout}s{extra()}")
            time.sleep(0.05)
        yield process
    finally:
        stop(process)


@contextlib.contextmanager
def running(command: list[str], base: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run ``command`` from the repository root until ``base``/healthz answers; yields
    ``base``; terminates the process after (kills it if it does not stop)."""
    with started(command, f"{base}/healthz", env=env):
        yield base


def uvicorn_command(app_path: str, port: int, workers: int = 1, *options: str) -> list[str]:
    """``python -m uvicorn app_path`` on 127.0.0.1:``port`` with ``workers`` workers."""
    return [
        sys.executable,
        *("-m", "uvicorn", app_path, "--host", "127.0.0.1", "--port", str(port)),
        *("--workers", str(workers), "--log-level", "warning"),
        *options,
    ]


def has_workers(workers: int) -> Callable[[subprocess.Popen[bytes]], bool]:
    """A ``ready`` check for ``started``: the supervisor has started all its ``workers``
    (a single worker runs in the root process itself)."""

    def ready(process: subprocess.Popen[bytes]) -> bool:
        return workers <= 1 or len(worker_processes(process.pid)) >= workers

    return ready


@contextlib.contextmanager
def uvicorn_server(app_path: str, env: dict[str, str], workers: int = 1) -> Iterator[ServerProcess]:
    """Run ``uvicorn app_path`` as a real separate process with ``workers`` workers; yields
    it once it answers ``/healthz`` with every worker started."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = uvicorn_command(app_path, port, workers)
    with started(command, f"{base}/healthz", env=env, ready=has_workers(workers)) as process:
        yield ServerProcess(process, base)


@contextlib.contextmanager
def uvicorn_process(app_path: str, env: dict[str, str], workers: int = 1) -> Iterator[str]:
    """Run ``uvicorn app_path`` as a real separate process; yields its base ``http://`` URL."""
    with uvicorn_server(app_path, env, workers) as server:
        yield server.base


#: gunicorn's worker class for the library's fast path (uvicorn with its websocket protocol).
GUNICORN_WORKER_CLASS = "fastapi_pubsub_cluster.servers.gunicorn_worker.PubSubUvicornWorker"


@contextlib.contextmanager
def gunicorn_server(
    app_path: str, env: dict[str, str], workers: int = 2
) -> Iterator[ServerProcess]:
    """Run ``gunicorn app_path`` with ``workers`` :data:`GUNICORN_WORKER_CLASS` workers behind
    one port; yields it once it answers ``/healthz`` with every worker started. The arbiter
    replaces a worker that dies (e.g. one killed with ``kill -9``)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        *("-m", "gunicorn", app_path, "--bind", f"127.0.0.1:{port}"),
        *("--workers", str(workers), "--worker-class", GUNICORN_WORKER_CLASS),
        *("--graceful-timeout", "5", "--log-level", "warning"),
    ]
    with started(command, f"{base}/healthz", env=env, ready=has_workers(workers)) as process:
        yield ServerProcess(process, base)
