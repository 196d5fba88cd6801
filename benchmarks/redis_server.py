"""The benchmark's Redis: ``REDIS_URL`` if set, else a throwaway ``redis-server`` of its own;
and for the cluster scenario ``REDIS_CLUSTER_URL`` if set, else a throwaway 3-master cluster."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import psutil
import redis
from redis.cluster import ClusterNode

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
#: Cluster nodes also listen on their port + this (the cluster bus).
CLUSTER_BUS_OFFSET = 10000
CLUSTER_SIZE = 3
CLUSTER_READY_TIMEOUT = 30.0


def free_port(also_free_at: int | None = None) -> int:
    """A loopback TCP port nothing listens on right now (with ``also_free_at``, one whose
    port + that offset is free too: a cluster node's bus port)."""
    deadline = time.monotonic() + 10
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if also_free_at is None or time.monotonic() > deadline:
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


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0] in CLUSTER_SCHEMES


@dataclass
class BenchRedis:
    """A Redis the benchmark talks to: one server, or the masters of a Redis Cluster.

    ``url`` is what the apps and the publisher are given (``redis://`` or
    ``redis+cluster://``); ``node_urls`` are plain URLs of every master, for INFO and SCAN;
    ``processes`` are set when the benchmark owns the servers.
    """

    url: str
    node_urls: tuple[str, ...] = ()
    processes: tuple[psutil.Process, ...] = ()
    _clients: list[redis.Redis] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.node_urls:
            self.node_urls = (self.url,)

    @property
    def owned(self) -> bool:
        return bool(self.processes)

    @property
    def cluster(self) -> bool:
        return is_cluster_url(self.url)

    def _node_clients(self) -> list[redis.Redis]:
        # Long-lived connections, so that connecting adds no commands of its own.
        if not self._clients:
            self._clients = [redis.Redis.from_url(url, socket_timeout=5) for url in self.node_urls]
        return self._clients

    def command_calls(self) -> int:
        """Total commands executed so far on every node (INFO commandstats), not counting
        INFO and PING themselves."""
        total = 0
        for client in self._node_clients():
            stats = client.info("commandstats")
            total += sum(
                int(entry["calls"])
                for name, entry in stats.items()
                if isinstance(entry, dict) and name not in ("cmdstat_info", "cmdstat_ping")
            )
        return total

    def cpu_by_node(self) -> list[float]:
        """CPU seconds (user + system) of every owned redis-server (empty for shared ones)."""
        seconds: list[float] = []
        for process in self.processes:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                seconds.append(0.0)
                continue
            seconds.append(float(times.user + times.system))
        return seconds

    def cpu_seconds(self) -> float:
        """CPU seconds of the owned redis-server processes together (0 for shared ones)."""
        return sum(self.cpu_by_node())

    def info_cpu_by_node(self) -> list[float]:
        """CPU seconds every node reports itself (INFO cpu, getrusage: microsecond
        resolution, where psutil counts 10 ms clock ticks)."""
        seconds: list[float] = []
        for client in self._node_clients():
            cpu = client.info("cpu")
            seconds.append(float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]))
        return seconds

    def used_memory(self) -> int:
        """INFO memory ``used_memory`` summed over the nodes, in bytes."""
        return sum(int(c.info("memory")["used_memory"]) for c in self._node_clients())

    def key_memory(self, key: str) -> int | None:
        """MEMORY USAGE of ``key`` (every element counted), on whichever node holds it."""
        for client in self._node_clients():
            with contextlib.suppress(redis.ResponseError):  # MOVED: another node's slot
                usage = client.memory_usage(key, samples=0)
                if usage is not None:
                    return int(usage)
        return None

    def stream_length(self, key: str) -> int:
        for client in self._node_clients():
            with contextlib.suppress(redis.ResponseError):
                length = int(client.xlen(key))
                if length:
                    return length
        return 0

    def delete_prefix(self, prefix: str) -> int:
        """Delete the keys a run left behind (every run has its own prefix); returns how many.

        On a cluster every node is scanned for its own keys, and keys are deleted one by one
        (a multi-key DEL must stay within one hash slot)."""
        deleted = 0
        for url in self.node_urls:
            client = redis.Redis.from_url(url, socket_timeout=5)
            try:
                keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
                if self.cluster:
                    pipe = client.pipeline(transaction=False)
                    for key in keys:
                        pipe.delete(key)
                    pipe.execute()
                else:
                    for start in range(0, len(keys), 500):
                        client.delete(*keys[start : start + 500])
                deleted += len(keys)
            finally:
                client.close()
        return deleted

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self._clients = []

    def version(self) -> str:
        client = redis.Redis.from_url(self.node_urls[0], socket_timeout=5)
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


def _redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: install it or set REDIS_URL")
    return binary


def _start_server(port: int, workdir: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            _redis_server_binary(),
            *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--dir", workdir, "--maxclients", "10000", "--protected-mode", "yes"),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


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
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    process = _start_server(port, workdir)
    try:
        server_url = f"redis://127.0.0.1:{port}/0"
        wait_until_pingable(server_url)
        owned = BenchRedis(server_url, processes=(psutil.Process(process.pid),))
        try:
            yield owned
        finally:
            owned.close()
    finally:
        _stop_server(process)
        shutil.rmtree(workdir, ignore_errors=True)


def cluster_masters(url: str) -> tuple[str, ...]:
    """Plain ``redis://`` URLs of every master of the cluster ``url`` (its seeds may be
    only some of the nodes)."""
    parts = urlsplit(url)
    auth, _, hosts = parts.netloc.rpartition("@")
    username, _, password = auth.partition(":") if auth else ("", "", "")
    seeds = []
    for host_port in filter(None, hosts.split(",")):
        host, _, port = host_port.rpartition(":")
        seeds.append(ClusterNode(host or host_port, int(port or 6379)))
    client = redis.RedisCluster(
        startup_nodes=seeds,
        username=unquote(username) or None,
        password=unquote(password) or None,
        ssl=parts.scheme == "rediss+cluster",
        socket_timeout=5,
    )
    try:
        scheme = "rediss" if parts.scheme == "rediss+cluster" else "redis"
        credentials = f"{auth}@" if auth else ""
        return tuple(
            f"{scheme}://{credentials}{node.host}:{node.port}/0" for node in client.get_primaries()
        )
    finally:
        client.close()


def _wait_for_cluster_ok(node_urls: tuple[str, ...], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for url in node_urls:
        client = redis.Redis.from_url(url, socket_timeout=2)
        try:
            while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
                time.sleep(0.1)
        finally:
            client.close()


@contextmanager
def bench_cluster(size: int = CLUSTER_SIZE) -> Iterator[BenchRedis]:
    """``REDIS_CLUSTER_URL`` if set (never flushed or stopped), else an owned cluster of
    ``size`` masters (no replicas) on free loopback ports: ``redis-server --cluster-enabled
    yes`` processes joined by ``redis-cli --cluster create``; all stopped afterwards."""
    url = os.environ.get("REDIS_CLUSTER_URL")
    if url:
        shared = BenchRedis(url, cluster_masters(url))
        try:
            yield shared
        finally:
            shared.close()
        return
    cli = shutil.which("redis-cli")
    if cli is None:
        raise SystemExit("redis-cli not found: install redis-tools or set REDIS_CLUSTER_URL")
    workdir = tempfile.mkdtemp(prefix="bench-redis-cluster-")
    processes: list[subprocess.Popen[bytes]] = []
    owned: BenchRedis | None = None
    try:
        ports: list[int] = []
        for index in range(size):
            port = free_port(also_free_at=CLUSTER_BUS_OFFSET)
            while port in ports:
                port = free_port(also_free_at=CLUSTER_BUS_OFFSET)
            node_dir = os.path.join(workdir, f"node-{index}")
            os.makedirs(node_dir)
            processes.append(
                _start_server(
                    port,
                    node_dir,
                    *("--cluster-enabled", "yes", "--cluster-node-timeout", "5000"),
                    *("--cluster-config-file", os.path.join(node_dir, "nodes.conf")),
                )
            )
            ports.append(port)
        node_urls = tuple(f"redis://127.0.0.1:{port}/0" for port in ports)
        for node_url, process in zip(node_urls, processes, strict=True):
            if process.poll() is not None:
                raise RuntimeError(f"cluster node {node_url} exited with {process.returncode}")
            wait_until_pingable(node_url)
        subprocess.run(
            [
                cli,
                *("--cluster", "create", *(f"127.0.0.1:{port}" for port in ports)),
                *("--cluster-replicas", "0", "--cluster-yes"),
            ],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        _wait_for_cluster_ok(node_urls, CLUSTER_READY_TIMEOUT)
        hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
        owned = BenchRedis(
            f"redis+cluster://{hosts}",
            node_urls,
            tuple(psutil.Process(process.pid) for process in processes),
        )
        yield owned
    finally:
        if owned is not None:
            owned.close()
        for process in processes:
            _stop_server(process)
        shutil.rmtree(workdir, ignore_errors=True)
