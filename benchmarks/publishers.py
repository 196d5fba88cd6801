"""How the driver publishes into each system: the way its users publish from outside."""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from typing import Any

import websockets

from benchmarks.apps import CONTROL_PATH
from benchmarks.apps.peer_settings import broadcaster_channel, raw_topic, socketio_channel
from benchmarks.targets import HISTORY_CHANNELS, PublishVia, Target

PADDING = "x" * 64
#: A ~10 KB body of the kind applications send (records), as compressible as such data is.
LARGE_BODY = [
    {"id": i, "name": f"user-{i:05d}", "score": (i * 7919) % 100_000, "online": i % 3 == 0}
    for i in range(160)
]


def make_payload(sequence: int, body: Any = PADDING) -> dict[str, Any]:
    """A message carrying its send time (µs since the epoch) for latency; ~100 bytes of
    JSON by default."""
    return {"sent_us": time.time_ns() // 1000, "seq": sequence, "body": body}


class Publisher(ABC):
    """Publishes payloads to a channel of one running system."""

    @abstractmethod
    async def start(self) -> None:
        """Open connections (some publishers connect lazily)."""

    @abstractmethod
    async def publish(self, channel: str, payload: dict[str, Any]) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...


class OursRedisPublisher(Publisher):
    """``RedisPublisher`` (one Redis or a cluster URL); ``history_channels`` must match the
    server's ``PUBSUB_HISTORY_CHANNELS``, or history channels would get plain PUBLISHes."""

    def __init__(self, redis_url: str, key_prefix: str, history_channels: str = "") -> None:
        from fastapi_pubsub_cluster import PubSubSettings, RedisPublisher

        settings = PubSubSettings(
            redis_url=redis_url, key_prefix=key_prefix, history_channels=history_channels
        )
        self._publisher = RedisPublisher(redis_url, settings=settings)

    async def start(self) -> None:
        pass  # connects on first use

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        await self._publisher.publish(channel, payload)

    async def close(self) -> None:
        await self._publisher.aclose()


class SocketioPublisher(Publisher):
    def __init__(self, redis_url: str, channel: str) -> None:
        import socketio

        self._manager = socketio.AsyncRedisManager(redis_url, channel=channel, write_only=True)

    async def start(self) -> None:
        pass  # connects on first use

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        await self._manager.emit("message", payload, room=channel, namespace="/")

    async def close(self) -> None:
        redis = getattr(self._manager, "redis", None)
        if redis is not None:
            await redis.aclose()


class BroadcasterPublisher(Publisher):
    """What ``broadcaster.Broadcast(redis_url).publish(channel, text)`` sends (its Redis
    backend: one redis-py ``PUBLISH``), from the driver: broadcaster is installed only in its
    peer venv (``benchmarks.peer_venvs``)."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        import redis.asyncio as aioredis

        self._client = aioredis.Redis.from_url(redis_url)
        self._prefix = prefix

    async def start(self) -> None:
        pass  # connects on first use

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        await self._client.publish(broadcaster_channel(channel, self._prefix), json.dumps(payload))

    async def close(self) -> None:
        await self._client.aclose()


class RawRedisPublisher(Publisher):
    """A plain redis-py ``PUBLISH`` of the JSON text (the hand-written loop's way)."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        import redis.asyncio as aioredis

        self._client = aioredis.Redis.from_url(redis_url)
        self._prefix = prefix

    async def start(self) -> None:
        pass

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        text = json.dumps(payload, separators=(",", ":"))
        await self._client.publish(raw_topic(channel, self._prefix), text)

    async def close(self) -> None:
        await self._client.aclose()


class ControlSocketPublisher(Publisher):
    """Through the app's control websocket (in-memory systems, and permit's in-app publish)."""

    def __init__(self, port: int) -> None:
        self._url = f"ws://127.0.0.1:{port}{CONTROL_PATH}"
        self._socket: websockets.ClientConnection | None = None

    async def start(self) -> None:
        self._socket = await websockets.connect(
            self._url, compression=None, max_size=None, open_timeout=20
        )

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        if self._socket is None:
            raise RuntimeError("publisher not started")
        await self._socket.send(f"{channel}\n{json.dumps(payload, separators=(',', ':'))}")

    async def close(self) -> None:
        if self._socket is not None:
            await self._socket.close()


def publisher_for(target: Target, port: int, redis_url: str, prefix: str) -> Publisher:
    """The publisher for ``target``; ``prefix`` is the run's key prefix (the apps' too)."""
    if target.publish_via is PublishVia.OURS_REDIS:
        return OursRedisPublisher(redis_url, prefix, HISTORY_CHANNELS if target.history else "")
    if target.publish_via is PublishVia.SOCKETIO_REDIS:
        return SocketioPublisher(redis_url, socketio_channel(prefix))
    if target.publish_via is PublishVia.BROADCASTER_REDIS:
        return BroadcasterPublisher(redis_url, prefix)
    if target.publish_via is PublishVia.RAW_REDIS:
        return RawRedisPublisher(redis_url, prefix)
    return ControlSocketPublisher(port)
