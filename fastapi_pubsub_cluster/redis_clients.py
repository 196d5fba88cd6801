"""redis-py clients built from one URL: ``redis://``, ``rediss://``, ``unix://`` or Sentinel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

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


def _common_options(settings: PubSubSettings, client_name: str | None) -> dict[str, Any]:
    return {
        "socket_timeout": settings.redis_timeout,
        "socket_connect_timeout": settings.redis_timeout,
        "client_name": client_name,
    }


def _primary_via_sentinel(url: str, options: dict[str, Any]) -> Redis:
    target = parse_sentinel_url(url)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels),
        sentinel_kwargs={
            "password": target.sentinel_password,
            "socket_timeout": options["socket_timeout"],
            "socket_connect_timeout": options["socket_connect_timeout"],
        },
    )
    return sentinel.master_for(  # type: ignore[no-any-return]
        target.service_name,
        db=target.db,
        username=target.username,
        password=target.password,
        ssl=target.ssl,
        **options,
    )


def command_client(
    url: str, settings: PubSubSettings, *, client_name: str | None, max_connections: int
) -> Redis:
    """A client for ordinary commands, with redis-py's bounded retries and a bounded pool."""
    options = _common_options(settings, client_name)
    if is_sentinel_url(url):
        return _primary_via_sentinel(url, {**options, "max_connections": max_connections})
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=settings.redis_timeout, **options
    )
    return Redis(connection_pool=pool)


def link_client(url: str, settings: PubSubSettings, *, client_name: str | None) -> Redis:
    """A client for the pub/sub link, with no automatic retry.

    redis-py would otherwise reconnect and resubscribe silently, and the manager would never
    learn that it must register its presence again and tell the application.
    """
    options = {**_common_options(settings, client_name), "retry": Retry(NoBackoff(), 0)}
    if is_sentinel_url(url):
        return _primary_via_sentinel(url, options)
    return Redis.from_url(url, **options)
