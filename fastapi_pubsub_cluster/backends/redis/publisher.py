"""Publishing from outside the web app: a script, a worker queue, a cron job. Needs only Redis."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from types import TracebackType
from typing import Any

from ...errors import PublishError
from ...settings import PubSubSettings
from . import announced
from .clients import REDIS_DOWN, RedisEndpoint
from .credentials import RedisCredentialsLike, redis_url_from
from .keys import RedisKeys
from .publishing import PublishPath

_ORIGIN = f"publisher-{socket.gethostname()}-{os.getpid()}"
#: Seconds a publisher trusts what it read of the workers' settings before reading again.
FOLLOW_INTERVAL = 30.0


class RedisPublisher:
    """Publishes to the clients of a running cluster with nothing but a Redis connection.

    ::

        async with RedisPublisher("redis://localhost:6379/0") as publisher:
            await publisher.publish("news", {"headline": "..."})

    Use the same ``key_prefix`` (settings) as the web app. It publishes exactly as a
    worker does (same encoding, same store script, same time limit), and decides which
    channels keep history as the workers announced it in Redis, read again every
    ``follow_interval`` seconds, unless ``settings`` sets ``history_channels`` itself (empty:
    none). See the one history decision in docs/guarantees.md.
    """

    def __init__(
        self,
        redis_url: RedisCredentialsLike,
        *,
        settings: PubSubSettings | None = None,
        follow_interval: float = FOLLOW_INTERVAL,
    ) -> None:
        self.settings = settings if settings is not None else PubSubSettings.from_env()
        self.follow_interval = follow_interval
        self._endpoint = RedisEndpoint(redis_url_from(redis_url), self.settings, client_name=None)
        self._client = self._endpoint.command_client(max_connections=4)
        self._path: PublishPath | None = None
        self._adopted_at = 0.0

    async def publish(self, channel: str, payload: Any) -> int:
        """Publish ``payload``; returns how many workers received it."""
        return await (await self._publish_path()).publish(channel, payload)

    async def _publish_path(self) -> PublishPath:
        if self._path is None or time.monotonic() - self._adopted_at > self.follow_interval:
            keys = RedisKeys(self.settings.key_prefix)
            where = self._endpoint.safe_url
            try:
                cluster = await announced.adopt(self._client, keys, self.settings, where=where)
            except REDIS_DOWN as exc:
                raise PublishError(
                    f"cannot read the cluster's settings from Redis at {where}: {exc!r}"
                ) from exc
            if self._path is None:
                self._path = PublishPath(self._endpoint, self._client, cluster, origin=_ORIGIN)
            else:
                self._path.adopt(cluster)
            self._adopted_at = time.monotonic()
        return self._path

    async def aclose(self) -> None:
        """Close the Redis connections."""
        if self._path is not None:
            await self._path.aclose()
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
    """Publish from synchronous code (a script, Celery, Django); returns workers reached.

    Runs :class:`RedisPublisher` in an event loop of its own: call it from a thread that
    is not running one.
    """

    async def publish_once() -> int:
        async with RedisPublisher(redis_url, settings=settings) as publisher:
            return await publisher.publish(channel, payload)

    return asyncio.run(publish_once())
