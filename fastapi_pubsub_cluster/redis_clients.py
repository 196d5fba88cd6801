"""redis-py clients built from one URL: ``redis://``, ``rediss://``, ``unix://`` or Sentinel."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .errors import ConfigurationError
from .settings import PubSubSettings

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379


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


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse a Sentinel URL; raises :class:`ConfigurationError` when it cannot be used."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ConfigurationError(f"not a Sentinel URL: {url!r}")
    auth, _, hosts = parts.netloc.rpartition("@")
    username, _, password = auth.partition(":") if auth else ("", "", "")
    sentinels: list[tuple[str, int]] = []
    for host_port in filter(None, hosts.split(",")):
        host, _, port = host_port.rpartition(":") if ":" in host_port else (host_port, "", "")
        try:
            sentinels.append((host or host_port, int(port) if port else DEFAULT_SENTINEL_PORT))
        except ValueError as exc:
            raise ConfigurationError(f"bad Sentinel address {host_port!r} in {url!r}") from exc
    path = [p for p in parts.path.split("/") if p]
    if not sentinels or not path:
        raise ConfigurationError(
            "Sentinel URL needs hosts and a service name: "
            "redis+sentinel://host:26379[,host2:26379]/service_name[/db]"
        )
    try:
        db = int(path[1]) if len(path) > 1 else 0
    except ValueError as exc:
        raise ConfigurationError(f"bad database number in {url!r}") from exc
    query = parse_qs(parts.query)
    return SentinelTarget(
        sentinels=tuple(sentinels),
        service_name=unquote(path[0]),
        db=db,
        username=unquote(username) or None,
        password=unquote(password) or None,
        sentinel_password=query.get("sentinel_password", [None])[0],
        ssl=parts.scheme == "rediss+sentinel",
    )


class RedisEndpoint:
    """Builds the clients for one Redis URL and closes everything it built.

    For a Sentinel URL the clients share one :class:`~redis.asyncio.sentinel.Sentinel`,
    which finds the current primary and follows failovers.
    """

    def __init__(self, url: str, settings: PubSubSettings, *, client_name: str | None) -> None:
        self.url = url
        self._options: dict[str, Any] = {
            "socket_timeout": settings.redis_timeout,
            "socket_connect_timeout": settings.redis_timeout,
            "client_name": client_name,
        }
        self._pool_timeout = settings.redis_timeout
        self._clients: list[Redis] = []
        self._sentinel: Sentinel | None = None
        self._target: SentinelTarget | None = None
        if is_sentinel_url(url):
            self._target = parse_sentinel_url(url)
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
                list(self._target.sentinels),
                sentinel_kwargs={
                    "password": self._target.sentinel_password,
                    "socket_timeout": settings.redis_timeout,
                    "socket_connect_timeout": settings.redis_timeout,
                },
            )

    def command_client(self, max_connections: int) -> Redis:
        """A client for ordinary commands: redis-py's bounded retries, a bounded pool."""
        if self._sentinel is not None:
            client = self._primary(max_connections=max_connections)
        else:
            pool = BlockingConnectionPool.from_url(
                self.url,
                max_connections=max_connections,
                timeout=self._pool_timeout,
                **self._options,
            )
            client = Redis(connection_pool=pool)
        self._clients.append(client)
        return client

    def link_client(self) -> Redis:
        """A client for the pub/sub link, with no automatic retry.

        redis-py would otherwise reconnect and resubscribe silently, and the manager would
        never learn that it must register its presence again and tell the application.
        """
        no_retry = Retry(NoBackoff(), 0)
        if self._sentinel is not None:
            client = self._primary(retry=no_retry)
        else:
            client = Redis.from_url(self.url, retry=no_retry, **self._options)
        self._clients.append(client)
        return client

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

    async def aclose(self) -> None:
        """Close every client built here, and the Sentinel connections."""
        clients, self._clients = self._clients, []
        for client in clients:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose(close_connection_pool=True)
        if self._sentinel is not None:
            for sentinel_client in self._sentinel.sentinels:
                with contextlib.suppress(RedisError, OSError):
                    await sentinel_client.aclose()
