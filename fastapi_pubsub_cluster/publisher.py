"""Publishing from outside the web app: a script, a worker queue, a cron job. Needs only Redis."""

from __future__ import annotations

import os
import socket
from types import TracebackType
from typing import Any

import redis
from redis.asyncio.cluster import RedisCluster

from .credentials import RedisCredentialsLike, redis_url_from
from .errors import ConfigurationError, PublishError
from .managers._scripts import STORE
from .publication import prepare_publication
from .redis_clients import RedisEndpoint, is_cluster_url, is_sentinel_url
from .settings import PubSubSettings

_ORIGIN = f"publisher-{socket.gethostname()}-{os.getpid()}"


class RedisPublisher:
    """Publishes to the clients of a running cluster with nothing but a Redis connection.

    ::

        async with RedisPublisher("redis://localhost:6379/0") as publisher:
            await publisher.publish("news", {"headline": "..."})

    Use the same ``key_prefix`` (settings) as the web app.
    """

    def __init__(
        self, redis_url: RedisCredentialsLike, *, settings: PubSubSettings | None = None
    ) -> None:
        self.settings = settings if settings is not None else PubSubSettings.from_env()
        self._endpoint = RedisEndpoint(redis_url_from(redis_url), self.settings, client_name=None)
        self._redis = self._endpoint.command_client(max_connections=4)
        self._store = self._redis.register_script(STORE)

    async def publish(self, channel: str, payload: Any) -> int:
        """Publish ``payload``; returns how many workers received it."""
        client = self._redis
        sharded = isinstance(client, RedisCluster)
        prepared = prepare_publication(
            self.settings,
            channel,
            payload,
            origin=_ORIGIN,
            publish_command="SPUBLISH" if sharded else "PUBLISH",
        )
        try:
            if prepared.stream_key is None and isinstance(client, RedisCluster):
                return int(await client.spublish(prepared.topic, prepared.data))
            if prepared.stream_key is None:
                return int(await client.publish(prepared.topic, prepared.data))
            _, receivers = await self._store(keys=[prepared.stream_key], args=prepared.script_args)
            return int(receivers)
        except (redis.RedisError, OSError) as exc:
            raise PublishError(f"cannot publish to {channel!r}: {exc}") from exc

    async def aclose(self) -> None:
        """Close the Redis connections."""
        await self._endpoint.aclose()

    async def __aenter__(self) -> RedisPublisher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


def publish_sync(
    redis_url: RedisCredentialsLike,
    channel: str,
    payload: Any,
    *,
    settings: PubSubSettings | None = None,
) -> int:
    """Publish from synchronous code (a script, Celery, Django); returns workers reached."""
    settings = settings if settings is not None else PubSubSettings.from_env()
    prepared = prepare_publication(settings, channel, payload, origin=_ORIGIN)
    url = redis_url_from(redis_url)
    if is_sentinel_url(url) or is_cluster_url(url):
        raise ConfigurationError("publish_sync takes a plain Redis URL; use RedisPublisher")
    client = redis.Redis.from_url(
        url,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
    )
    try:
        if prepared.stream_key is None:
            return int(client.publish(prepared.topic, prepared.data))
        _, receivers = client.eval(STORE, 1, prepared.stream_key, *prepared.script_args)
        return int(receivers)
    except (redis.RedisError, OSError) as exc:
        raise PublishError(f"cannot publish to {channel!r}: {exc}") from exc
    finally:
        client.close()
