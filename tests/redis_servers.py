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


def free_port(also_free_at: int | None = None) -> int:
    """A TCP port on loopback that nothing listens on right now (and, with
    ``also_free_at``, whose port + that offset is free too: a cluster bus port)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if also_free_at is None:
            return port
        if port + also_free_at < 65536 and _is_free(port + also_free_at):
            return port


def _is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_until_pingable(
    url: str, timeout: float = 10.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until Redis at ``url`` answers PING, or raise after ``timeout`` (at once if
    ``process`` exits: its port was taken)."""
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        while True:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                if process is not None and process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {process.returncode}") from None
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
    #: Cluster nodes also listen on port + 10000 (the cluster bus).
    cluster_bus: bool = False
    _started_once: bool = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server; on the first start, move to another port if this one was taken
        meanwhile (restarts keep the port, as a real restart would)."""
        for _ in range(5):
            if self.cluster_bus and not self._started_once:
                self.port = free_port(also_free_at=10000)
            try:
                self._start_once()
            except RuntimeError:
                if self._started_once:
                    raise
                self.port = free_port()
                continue
            self._started_once = True
            return
        raise RuntimeError("could not start redis-server on a free port")

    def _start_once(self) -> None:
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
        try:
            wait_until_pingable(self.url, process=self.process)
        except RuntimeError:
            self.stop()
            raise

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


@dataclass
class OwnedRedisCluster:
    """A Redis Cluster of ``size`` masters (no replicas) on loopback ports, built from
    ``redis-server --cluster-enabled yes`` processes and ``redis-cli --cluster create``."""

    size: int = 3
    nodes: list[OwnedRedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"redis+cluster://{hosts}"

    def start(self) -> None:
        for _ in range(self.size):
            node = OwnedRedisServer(cluster_bus=True)
            node.extra_args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                os.path.join(node.workdir, "nodes.conf"),
                "--cluster-node-timeout",
                "2000",
            ]
            node.start()
            self.nodes.append(node)
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed (apt-get install redis-tools)")
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        for node in self.nodes:
            client = redis.Redis.from_url(node.url)
            try:
                while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
                    time.sleep(0.1)
            finally:
                client.close()

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        self.nodes.clear()
