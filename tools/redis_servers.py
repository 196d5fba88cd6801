"""Real Redis servers: throwaway ``redis-server`` processes (alone, as a Redis Cluster, with a
Sentinel) and the Redis a test session shares."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from tools.ports import free_port

#: Cluster nodes also listen on their port + this (the cluster bus).
CLUSTER_BUS_OFFSET = 10000
#: How long a new cluster (or one after a failover) may take to reach cluster_state:ok.
CLUSTER_READY_TIMEOUT = 30.0
#: Ports tried before giving up when the free port was taken before the server bound it.
START_ATTEMPTS = 5


class MissingBinaryError(RuntimeError):
    """``redis-server`` or ``redis-cli`` is not installed."""


def redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise MissingBinaryError("redis-server is not installed (apt-get install redis-server)")
    return binary


def redis_cli_binary() -> str:
    binary = shutil.which("redis-cli")
    if binary is None:
        raise MissingBinaryError("redis-cli is not installed (apt-get install redis-tools)")
    return binary


@functools.cache
def redis_server_version() -> tuple[int, ...]:
    """The installed redis-server's version, e.g. ``(7, 0, 15)`` (``(0,)`` if unknown)."""
    output = subprocess.run(
        [redis_server_binary(), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", output)
    return tuple(int(part) for part in match.groups()) if match else (0,)


def wait_until_pingable(
    url: str, timeout: float = 10.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until Redis at ``url`` answers PING, or raise after ``timeout`` (at once, with
    RuntimeError, if ``process`` exits: its port was taken)."""
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


def debug_sleep(url: str, seconds: float) -> threading.Thread:
    """Make the Redis at ``url`` serve nothing for ``seconds`` (``DEBUG SLEEP``: connections
    stay open, commands wait). Returns at once; join the returned thread to wait for the end.

    Owned servers allow DEBUG from loopback (``--enable-debug-command local`` on Redis 7+).
    """

    def sleep() -> None:
        client = redis.Redis.from_url(url, socket_timeout=seconds + 10)
        try:
            with contextlib.suppress(redis.RedisError):  # e.g. the server was killed meanwhile
                client.execute_command("DEBUG", "SLEEP", seconds)  # type: ignore[no-untyped-call]
        finally:
            client.close()

    thread = threading.Thread(target=sleep, name=f"debug-sleep-{url}", daemon=True)
    thread.start()
    return thread


def _stop_process(process: subprocess.Popen[bytes], graceful: bool) -> None:
    """SIGKILL (a crash), or with ``graceful`` SIGTERM and SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    if not graceful:
        process.kill()
        process.wait(timeout=10)
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGCONT)  # a paused server could not act on SIGTERM
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class OwnedRedisServer:
    """A redis-server process its user alone owns: it can be killed, restarted and paused.

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
    _paused: bool = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"redis-server on port {self.port} is not running")
        return self.process.pid

    def client(self, **options: Any) -> redis.Redis:
        """A new synchronous client of this server (close it after use)."""
        return redis.Redis.from_url(self.url, **options)

    def command(self) -> list[str]:
        debug = ["--enable-debug-command", "local"] if redis_server_version() >= (7,) else []
        return [
            redis_server_binary(),
            *("--port", str(self.port), "--bind", "127.0.0.1", "--protected-mode", "yes"),
            *("--save", "", "--appendonly", "no", "--dir", self.workdir),
            *("--maxclients", "10000", *debug),
            *self.extra_args,
        ]

    def start(self) -> None:
        """Start the server; on the first start, move to another port if this one was taken
        meanwhile (restarts keep the port, as a real restart would)."""
        redis_server_binary()  # not installed: no use trying other ports
        for _ in range(START_ATTEMPTS):
            if self.cluster_bus and not self._started_once:
                self.port = free_port(also_free_at=CLUSTER_BUS_OFFSET)
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
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
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
            _stop_process(self.process, graceful=False)
            self.process = None
        self._paused = False

    def shutdown(self) -> None:
        """Stop the server gracefully (SIGTERM; SIGKILL if it has not exited in 10 s)."""
        if self.process is not None:
            _stop_process(self.process, graceful=True)
            self.process = None
        self._paused = False

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing is answered, as on a
        hung host. ``resume()`` continues it."""
        os.kill(self.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Continue a server ``pause()`` froze (SIGCONT)."""
        os.kill(self.pid, signal.SIGCONT)
        self._paused = False

    def debug_sleep(self, seconds: float) -> threading.Thread:
        """``DEBUG SLEEP seconds`` on this server; see ``debug_sleep``."""
        return debug_sleep(self.url, seconds)

    def close(self, graceful: bool = False) -> None:
        """Stop the server (killed, or with ``graceful`` terminated) and delete its files."""
        if graceful:
            self.shutdown()
        else:
            self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def session_redis_url() -> Iterator[str]:
    """REDIS_URL if set; else a throwaway redis-server; else a testcontainers Redis (only
    where Docker works)."""
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

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}/0"

    def start(self) -> None:
        """Start the Sentinel, on another port if this one was taken meanwhile."""
        redis_server_binary()  # not installed: no use trying other ports
        for _ in range(START_ATTEMPTS):
            try:
                self._start_once()
            except RuntimeError:
                self.port = free_port()
                continue
            return
        raise RuntimeError("could not start redis-server --sentinel on a free port")

    def _start_once(self) -> None:
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
            [redis_server_binary(), config, "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until_pingable(f"redis://127.0.0.1:{self.port}/0", process=self.process)
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is not None:
            _stop_process(self.process, graceful=False)
            self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class OwnedRedisCluster:
    """A Redis Cluster of ``size`` masters with ``replicas`` replicas each, on loopback ports:
    ``redis-server --cluster-enabled yes`` processes joined by ``redis-cli --cluster create``.

    With replicas, ``kill_master()`` crashes a master and waits until a replica of it has
    taken over its slots. ``start()`` cleans up after itself when it fails.
    """

    size: int = 3
    replicas: int = 0
    #: ``cluster-node-timeout``: how long a node may be unreachable before it counts as
    #: failed (and a replica of a master takes over).
    node_timeout_ms: int = 2000
    nodes: list[OwnedRedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node (running or not) as a seed."""
        hosts = ",".join(node.address for node in self.nodes)
        return f"redis+cluster://{hosts}"

    @property
    def node_urls(self) -> tuple[str, ...]:
        """Plain ``redis://`` URLs of every node, in start order."""
        return tuple(node.url for node in self.nodes)

    def start(self) -> None:
        try:
            cli = redis_cli_binary()
            for _ in range(self.size * (1 + self.replicas)):
                node = OwnedRedisServer(cluster_bus=True)
                node.extra_args = [
                    *("--cluster-enabled", "yes"),
                    *("--cluster-config-file", os.path.join(node.workdir, "nodes.conf")),
                    *("--cluster-node-timeout", str(self.node_timeout_ms)),
                    # a replica takes over however long its link has been down
                    *("--cluster-replica-validity-factor", "0"),
                ]
                self.nodes.append(node)
                node.start()
            subprocess.run(
                [
                    cli,
                    *("--cluster", "create", *(node.address for node in self.nodes)),
                    *("--cluster-replicas", str(self.replicas), "--cluster-yes"),
                ],
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=60,
            )
            self.wait_until_ok()
        except BaseException:
            self.close()
            raise

    def _live_nodes(self) -> list[OwnedRedisServer]:
        return [node for node in self.nodes if node.running and not node.paused]

    def _replication(self, node: OwnedRedisServer) -> dict[str, Any]:
        client = node.client(socket_timeout=2)
        try:
            return dict(client.info("replication"))
        finally:
            client.close()

    def _ok(self) -> bool:
        for node in self._live_nodes():
            client = node.client(socket_timeout=2)
            try:
                info = client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
                replication = client.info("replication")
            finally:
                client.close()
            if b"cluster_state:ok" not in info:
                return False
            if replication["role"] != "master" and replication["master_link_status"] != "up":
                return False
        return True

    def wait_until_ok(self, timeout: float = CLUSTER_READY_TIMEOUT) -> None:
        """Block until every running node reports cluster_state:ok and every running replica
        is linked to its master."""
        deadline = time.monotonic() + timeout
        while not self._ok():
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def masters(self) -> list[OwnedRedisServer]:
        """The running nodes that are masters now."""
        return [n for n in self._live_nodes() if self._replication(n)["role"] == "master"]

    def replicas_of(self, master: OwnedRedisServer) -> list[OwnedRedisServer]:
        """The running nodes that replicate ``master`` now."""
        found = []
        for node in self._live_nodes():
            replication = self._replication(node)
            if replication["role"] != "master" and int(replication["master_port"]) == master.port:
                found.append(node)
        return found

    def kill_master(
        self, master: OwnedRedisServer | None = None, timeout: float = CLUSTER_READY_TIMEOUT
    ) -> OwnedRedisServer:
        """SIGKILL ``master`` (default: the first master) and wait until one of its replicas
        is master and the cluster is ok again; returns that promoted replica.

        The killed node can rejoin with ``start()`` (it comes back as a replica)."""
        master = master if master is not None else self.masters()[0]
        replicas = self.replicas_of(master)
        if not replicas:
            raise RuntimeError(f"master {master.address} has no replica (use replicas=1)")
        master.stop()
        deadline = time.monotonic() + timeout
        while True:
            promoted = [r for r in replicas if self._replication(r)["role"] == "master"]
            if promoted:
                self.wait_until_ok(max(deadline - time.monotonic(), 0.0))
                return promoted[0]
            if time.monotonic() > deadline:
                raise RuntimeError(f"no replica of {master.address} took over in {timeout}s")
            time.sleep(0.1)

    def close(self, graceful: bool = False) -> None:
        for node in self.nodes:
            node.close(graceful=graceful)
        self.nodes.clear()
