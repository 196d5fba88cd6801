"""The benchmark's Redis: ``REDIS_URL`` if set, else a throwaway ``redis-server`` of its own;
and for the cluster scenario ``REDIS_CLUSTER_URL`` if set, else a throwaway 3-master cluster."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import psutil
import redis
from redis.cluster import ClusterNode

from tools.redis_servers import (
    MissingBinaryError,
    OwnedRedisCluster,
    OwnedRedisServer,
    wait_until_pingable,
)

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
CLUSTER_SIZE = 3
#: cluster-node-timeout of an owned cluster (nothing fails over during a benchmark).
CLUSTER_NODE_TIMEOUT_MS = 5000


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
    server = OwnedRedisServer(workdir=tempfile.mkdtemp(prefix="bench-redis-"))
    try:
        try:
            server.start()
        except MissingBinaryError as error:
            raise SystemExit(f"{error}, or set REDIS_URL") from None
        owned = BenchRedis(server.url, processes=(psutil.Process(server.pid),))
        try:
            yield owned
        finally:
            owned.close()
    finally:
        server.close(graceful=True)


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
    cluster = OwnedRedisCluster(size=size, node_timeout_ms=CLUSTER_NODE_TIMEOUT_MS)
    try:
        cluster.start()
    except MissingBinaryError as error:
        raise SystemExit(f"{error}, or set REDIS_CLUSTER_URL") from None
    owned = BenchRedis(
        cluster.url,
        cluster.node_urls,
        tuple(psutil.Process(node.pid) for node in cluster.nodes),
    )
    try:
        yield owned
    finally:
        owned.close()
        cluster.close(graceful=True)
