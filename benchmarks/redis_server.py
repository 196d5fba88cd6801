"""The benchmark's Redis: ``REDIS_URL`` if set, else a throwaway ``redis-server`` of its own."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil
import redis


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class BenchRedis:
    """A Redis the benchmark talks to; ``process`` is set when the benchmark owns it."""

    url: str
    process: psutil.Process | None = None
    _client: redis.Redis | None = None

    @property
    def owned(self) -> bool:
        return self.process is not None

    def command_calls(self) -> int:
        """Total commands executed so far (INFO commandstats), not counting INFO itself."""
        # One long-lived connection, so that connecting adds no commands of its own.
        if self._client is None:
            self._client = redis.Redis.from_url(self.url, socket_timeout=5)
        stats = self._client.info("commandstats")
        return sum(
            int(entry["calls"])
            for name, entry in stats.items()
            if isinstance(entry, dict) and name not in ("cmdstat_info", "cmdstat_ping")
        )

    def cpu_seconds(self) -> float:
        """CPU seconds of an owned redis-server (0 for a shared one)."""
        if self.process is None:
            return 0.0
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def delete_prefix(self, prefix: str) -> int:
        """Delete the keys a run left behind (every run has its own prefix); returns how many."""
        client = redis.Redis.from_url(self.url, socket_timeout=5)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
            return len(keys)
        finally:
            client.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def version(self) -> str:
        client = redis.Redis.from_url(self.url, socket_timeout=5)
        try:
            return str(client.info("server").get("redis_version", "?"))
        finally:
            client.close()


def wait_until_pingable(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        while True:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)
    finally:
        client.close()


@contextmanager
def bench_redis() -> Iterator[BenchRedis]:
    """``REDIS_URL`` if set (never flushed or stopped), else an owned ``redis-server``."""
    url = os.environ.get("REDIS_URL")
    if url:
        wait_until_pingable(url)
        shared = BenchRedis(url)
        try:
            yield shared
        finally:
            shared.close()
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: install it or set REDIS_URL")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    process = subprocess.Popen(
        [
            binary,
            *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--dir", workdir, "--maxclients", "10000", "--protected-mode", "yes"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        server_url = f"redis://127.0.0.1:{port}/0"
        wait_until_pingable(server_url)
        owned = BenchRedis(server_url, psutil.Process(process.pid))
        try:
            yield owned
        finally:
            owned.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)
