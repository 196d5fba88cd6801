"""Real Redis servers for the tests: an existing URL, a throwaway redis-server, or a container."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_pingable(url: str, timeout: float = 10.0) -> None:
    """Block until Redis at ``url`` answers PING, or raise after ``timeout``."""
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


@dataclass
class OwnedRedisServer:
    """A redis-server process owned by a test: it can be stopped and started again.

    The port stays the same across restarts, as a real Redis restart would look to clients.
    Nothing is persisted, so a restart also loses every key.
    """

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="pubsub-redis-"))
    #: More redis-server arguments, e.g. ``["--replicaof", "127.0.0.1", "6380"]``.
    extra_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.workdir,
                "--maxclients",
                "10000",
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until_pingable(self.url)

    def stop(self) -> None:
        """Kill the server (SIGKILL: no goodbye to clients, as in a crash)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def session_redis_url() -> Iterator[str]:
    """REDIS_URL if set; else a throwaway redis-server; else a testcontainers Redis."""
    url = os.environ.get("REDIS_URL")
    if url:
        wait_until_pingable(url)
        yield url
        return
    if shutil.which("redis-server"):
        server = OwnedRedisServer()
        server.start()
        try:
            yield server.url
        finally:
            server.close()
        return
    from testcontainers.redis import RedisContainer  # only where Docker works

    with RedisContainer() as container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(6379)
        yield f"redis://{host}:{port}/0"


@dataclass
class OwnedSentinel:
    """A Redis Sentinel watching one primary under the name ``service``."""

    primary_port: int
    service: str = "pubsub-primary"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="pubsub-sentinel-"))

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        config = os.path.join(self.workdir, "sentinel.conf")
        with open(config, "w") as handle:
            handle.write(
                f"port {self.port}\n"
                "bind 127.0.0.1\n"
                f"dir {self.workdir}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.primary_port} 1\n"
                f"sentinel down-after-milliseconds {self.service} 1000\n"
                f"sentinel failover-timeout {self.service} 5000\n"
            )
        self.process = subprocess.Popen(
            [binary, config, "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until_pingable(f"redis://127.0.0.1:{self.port}/0")

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}/0"

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None
        shutil.rmtree(self.workdir, ignore_errors=True)
