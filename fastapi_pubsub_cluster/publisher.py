"""Publishing from outside the web app: a script, a worker queue, a cron job. Needs only Redis."""

from __future__ import annotations

import os
import socket
import uuid
from types import TracebackType
from typing import Any

import redis

from .codec import Envelope, EventKind, encode_envelope
from .credentials import RedisCredentialsLike, redis_url_from
from .errors import ConfigurationError, MessageTooLargeError, PublishError
from .keys import RedisKeys
from .redis_clients import RedisEndpoint, is_sentinel_url
from .settings import PubSubSettings

_ORIGIN = f"publisher-{socket.gethostname()}-{os.getpid()}"


def _encode(settings: PubSubSettings, channel: str, payload: Any) -> tuple[str, bytes]:
    settings.validate_channel_id(channel)
    data = encode_envelope(
        Envelope(EventKind.MESSAGE, channel, _ORIGIN, uuid.uuid4().hex, 0, payload)
    )
    if len(data) > settings.max_message_bytes:
        raise MessageTooLargeError(
            f"message is {len(data)} bytes; the limit is {settings.max_message_bytes}"
        )
    return RedisKeys(settings.key_prefix).topic(channel), data


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

    async def publish(self, channel: str, payload: Any) -> int:
        """Publish ``payload``; returns how many workers received it."""
        topic, data = _encode(self.settings, channel, payload)
        try:
            return int(await self._redis.publish(topic, data))
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
    topic, data = _encode(settings, channel, payload)
    url = redis_url_from(redis_url)
    if is_sentinel_url(url):
        raise ConfigurationError("publish_sync takes a plain Redis URL; use RedisPublisher")
    client = redis.Redis.from_url(
        url,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
    )
    try:
        return int(client.publish(topic, data))
    except (redis.RedisError, OSError) as exc:
        raise PublishError(f"cannot publish to {channel!r}: {exc}") from exc
    finally:
        client.close()
