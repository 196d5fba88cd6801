"""redis-py clients built from one URL: ``redis://``, ``rediss://``, ``unix://``, Sentinel
(``redis+sentinel://``) or Redis Cluster (``redis+cluster://host:port[,host:port...]``).

This is the one place that decides "cluster or single Redis" from a URL; it also says what
their replies mean as Python values."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import RedisError

from ...errors import ConfigurationError
from ...redaction import redact_url
from ...settings import PubSubSettings
from .waiting import WaitingRedisCluster, WaitingSentinelPool

# Every scheme the library takes is in redaction.URL_SCHEMES (which masks their secrets).
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_REDIS_PORT = 6379
COMMAND_RETRIES = 3

#: A client for ordinary commands: one Redis, or a Redis Cluster.
CommandClient = Redis | RedisCluster

#: The pub/sub links speak RESP2: a message is then a plain array, which redis-py parses
#: about 10% faster than a RESP3 push (and without a push handler), per message per worker.
LINK_PROTOCOL = 2

#: Errors that mean "Redis is not answering", as opposed to bugs.
REDIS_DOWN = (RedisError, OSError, asyncio.TimeoutError)


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """Where the Sentinels are and which primary they watch.

    From ``redis+sentinel://[user:password@]host[:port][,host[:port]...]/service[/db]``;
    ``rediss+sentinel://`` uses TLS to the primary; ``?sentinel_password=`` authenticates
    to the Sentinels themselves.
    """

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    ssl: bool = False


def is_sentinel_url(url: str) -> bool:
    """True for ``redis+sentinel://`` and ``rediss+sentinel://`` URLs."""
    return url.split("://", 1)[0] in SENTINEL_SCHEMES


def is_cluster_url(url: str) -> bool:
    """True for ``redis+cluster://`` and ``rediss+cluster://`` URLs."""
    return url.split("://", 1)[0] in CLUSTER_SCHEMES


def _hosts(netloc: str, default_port: int, url: str) -> tuple[str, str, list[tuple[str, int]]]:
    """``user:password@h1:p1,h2:p2`` -> (user, password, [(h1, p1), (h2, p2)])."""
    auth, _, hosts = netloc.rpartition("@")
    username, _, password = auth.partition(":") if auth else ("", "", "")
    addresses: list[tuple[str, int]] = []
    for host_port in filter(None, hosts.split(",")):
        host, _, port = host_port.rpartition(":") if ":" in host_port else (host_port, "", "")
        try:
            addresses.append((host or host_port, int(port) if port else default_port))
        except ValueError as exc:
            raise ConfigurationError(f"bad address {host_port!r} in {redact_url(url)!r}") from exc
    return unquote(username), unquote(password), addresses


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse a Sentinel URL; raises :class:`ConfigurationError` when it cannot be used."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ConfigurationError(f"not a Sentinel URL: {redact_url(url)!r}")
    username, password, sentinels = _hosts(parts.netloc, DEFAULT_SENTINEL_PORT, url)
    path = [p for p in parts.path.split("/") if p]
    if not sentinels or not path:
        raise ConfigurationError(
            "Sentinel URL needs hosts and a service name: "
            "redis+sentinel://host:26379[,host2:26379]/service_name[/db]"
        )
    try:
        db = int(path[1]) if len(path) > 1 else 0
    except ValueError as exc:
        raise ConfigurationError(f"bad database number in {redact_url(url)!r}") from exc
    query = parse_qs(parts.query)
    return SentinelTarget(
        sentinels=tuple(sentinels),
        service_name=unquote(path[0]),
        db=db,
        username=username or None,
        password=password or None,
        sentinel_password=query.get("sentinel_password", [None])[0],
        ssl=parts.scheme == "rediss+sentinel",
    )


class RedisEndpoint:
    """Builds the clients for one Redis URL and closes everything it built.

    For a Sentinel URL the clients share one :class:`~redis.asyncio.sentinel.Sentinel`,
    which finds the current primary and tracks failovers.
    """

    def __init__(self, url: str, settings: PubSubSettings, *, client_name: str | None) -> None:
        self.url = url
        self._options: dict[str, Any] = {
            "socket_timeout": settings.redis_timeout,
            "socket_connect_timeout": settings.redis_timeout,
            "client_name": client_name,
        }
        self._pool_timeout = settings.redis_timeout
        self._clients: list[CommandClient] = []
        self._sentinel: Sentinel | None = None
        self._target: SentinelTarget | None = None
        #: True for a Redis Cluster URL: channels are spread over shards, and their topics
        #: are shard channels (SPUBLISH/SSUBSCRIBE).
        self.is_cluster = is_cluster_url(url)
        #: The command that publishes to a channel's topic.
        self.publish_command = "SPUBLISH" if self.is_cluster else "PUBLISH"
        if self.is_cluster:
            parts = urlsplit(url)
            username, password, nodes = _hosts(parts.netloc, DEFAULT_REDIS_PORT, url)
            if not nodes:
                raise ConfigurationError(f"Redis Cluster URL names no node: {redact_url(url)!r}")
            self._cluster_nodes = nodes
            self._cluster_auth: dict[str, Any] = {
                "username": username or None,
                "password": password or None,
                "ssl": parts.scheme == "rediss+cluster",
            }
        if is_sentinel_url(url):
            self._target = parse_sentinel_url(url)
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
                list(self._target.sentinels),
                sentinel_kwargs={
                    "password": self._target.sentinel_password,
                    "socket_timeout": settings.redis_timeout,
                    "socket_connect_timeout": settings.redis_timeout,
                },
            )

    @property
    def is_one_address(self) -> bool:
        """True when every command goes to one fixed address: not a cluster's shards, nor
        whichever server Sentinel names the primary (its pool drops its connections when
        the primary changes; a connection kept elsewhere would publish to a replica)."""
        return not self.is_cluster and self._sentinel is None

    @property
    def safe_url(self) -> str:
        """The URL with its secrets masked, for messages and logs."""
        return redact_url(self.url)

    def command_client(
        self, max_connections: int, *, retries: int = COMMAND_RETRIES, tracked: bool = True
    ) -> CommandClient:
        """A client for ordinary commands: redis-py's bounded retries, a bounded pool
        (per shard on a cluster); closed by :meth:`aclose` unless not ``tracked``."""
        # A stale pooled connection (Redis restarted) fails once and is replaced: retry a
        # few times, briefly, so that a command does not fail for it.
        retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), retries)
        client: CommandClient
        if self.is_cluster:
            client = WaitingRedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in self._cluster_nodes],
                max_connections=max_connections,
                retry=retry,
                **self._cluster_auth,
                **self._options,
            )
        elif self._sentinel is not None:
            client = self._primary(
                max_connections=max_connections,
                retry=retry,
                connection_pool_class=WaitingSentinelPool,
                timeout=self._pool_timeout,
            )
        else:
            pool = BlockingConnectionPool.from_url(
                self.url,
                max_connections=max_connections,
                timeout=self._pool_timeout,
                retry=retry,
                **self._options,
            )
            client = Redis(connection_pool=pool)
        if tracked:
            self._clients.append(client)
        return client

    async def answers(self) -> bool:
        """Whether Redis answers a PING on a fresh connection within the command timeout:
        what tells "Redis does not answer" apart from this worker's own trouble (a stalled
        event loop, a pool that had no connection free)."""
        client = self.command_client(1, retries=0, tracked=False)
        try:
            async with asyncio.timeout(self._pool_timeout):
                await client.ping()
            return True
        except REDIS_DOWN:
            return False
        finally:
            with contextlib.suppress(*REDIS_DOWN):
                await _close(client)

    def link_client(self) -> Redis:
        """A client for the pub/sub link, with no automatic retry (the caller closes it).

        redis-py would otherwise reconnect and resubscribe silently, and the manager would
        never learn that it must register its presence again and tell the application.
        """
        no_retry = Retry(NoBackoff(), 0)
        if self.is_cluster:
            raise ConfigurationError("on a cluster, links are per node: use node_link_client")
        if self._sentinel is not None:
            return self._primary(retry=no_retry, protocol=LINK_PROTOCOL)
        return Redis.from_url(self.url, retry=no_retry, protocol=LINK_PROTOCOL, **self._options)

    def node_link_client(self, host: str, port: int) -> Redis:
        """A pub/sub link client to one cluster node, with no automatic retry (the caller
        closes it)."""
        return Redis(
            host=host,
            port=port,
            retry=Retry(NoBackoff(), 0),
            protocol=LINK_PROTOCOL,
            **self._cluster_auth,
            **self._options,
        )

    def _primary(self, **extra: Any) -> Redis:
        assert self._sentinel is not None and self._target is not None
        return self._sentinel.master_for(  # type: ignore[no-any-return]
            self._target.service_name,
            db=self._target.db,
            username=self._target.username,
            password=self._target.password,
            ssl=self._target.ssl,
            **self._options,
            **extra,
        )

    async def rediscover_primary(self) -> None:
        """Through Sentinel, move the command clients' connections to the primary the
        Sentinel names now (a link that reconnected may have found a new one: commands
        left on the old one would publish its probes where it no longer listens)."""
        for client in self._clients:
            pool = getattr(client, "connection_pool", None)
            if isinstance(pool, WaitingSentinelPool):
                with contextlib.suppress(*REDIS_DOWN):  # its next connection asks again
                    await pool.rediscover_primary()

    @staticmethod
    async def publish_raw(client: CommandClient, topic: str, data: bytes) -> int:
        """PUBLISH (or SPUBLISH on a cluster) ``data``; how many subscribers got it."""
        if isinstance(client, RedisCluster):
            return int(await client.spublish(topic, data))
        return int(await client.publish(topic, data))

    async def aclose(self) -> None:
        """Close every client built here, and the Sentinel connections."""
        clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(RedisError, OSError):
                await _close(client)
        if self._sentinel is not None:
            for sentinel_client in self._sentinel.sentinels:
                with contextlib.suppress(RedisError, OSError):
                    await sentinel_client.aclose()


async def _close(client: CommandClient) -> None:
    if isinstance(client, RedisCluster):
        await client.aclose()
    else:
        await client.aclose(close_connection_pool=True)


@dataclass(frozen=True, slots=True)
class PresenceClients:
    """The connections presence uses, so that liveness never waits behind work: ordinary
    commands share a pool; the heartbeat and the batched joins and leaves each have their
    own; and a fresh connection tells whether Redis itself answers."""

    commands: CommandClient
    heartbeat: CommandClient
    writes: CommandClient
    #: True if Redis answers a PING on a fresh connection (see RedisEndpoint.answers).
    answers: Callable[[], Awaitable[bool]]
    #: The Redis URL with its secrets masked, for errors.
    target: str


def text(value: bytes | str) -> str:
    """A Redis reply as text."""
    return value.decode() if isinstance(value, bytes) else value


def metadata_of(raw: list[Any]) -> dict[str, Any]:
    """A metadata hash's HGETALL reply (flat pairs of id, JSON) as a dict; entries that are
    not JSON (not ours) are left out."""
    metadata: dict[str, Any] = {}
    for i in range(0, len(raw) - 1, 2):
        try:
            metadata[text(raw[i])] = json.loads(raw[i + 1])
        except ValueError:
            continue
    return metadata
