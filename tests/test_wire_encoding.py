"""Payloads some wire format cannot carry as they are: one failed encode stops nothing else,
and bytes reach JSON clients in a defined form."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import msgpack  # type: ignore[import-untyped]
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection

from fastapi_pubsub_cluster import Metrics, PubSubHub, RedisBackend
from tests.apps.local_app import build_app
from tests.conftest import make_settings
from tests.live import connect, recv_until, serve, wait_for_condition


class EncodingMetrics(Metrics):
    def __init__(self) -> None:
        self.encoding_failures = 0

    def encoding_failed(self) -> None:
        self.encoding_failures += 1


async def recv_msgpack_until(ws: ClientConnection, predicate: Any, timeout: float = 10.0) -> Any:
    """Read msgpack frames until one satisfies ``predicate``; return it."""
    async with asyncio.timeout(timeout):
        while True:
            message = msgpack.unpackb(await ws.recv(), raw=False)
            if predicate(message):
                return message


async def _join_as_older_worker(
    redis_client: aioredis.Redis, hub: PubSubHub, channel: str, metadata: dict[str, Any]
) -> str:
    """Register a member as a worker of a release that did not check metadata would:
    its entries, then its join event (the envelope format of the Redis channel)."""
    backend = hub.backend
    assert isinstance(backend, RedisBackend)
    keys = backend.keys
    member = "older-worker:1"
    async with redis_client.pipeline(transaction=True) as pipe:
        pipe.sadd(keys.members(channel), member)
        pipe.hset(keys.meta(channel), member, json.dumps(metadata))
        pipe.incr(keys.seq(channel))
        *_, seq = await pipe.execute()
    payload = [True, json.dumps(metadata)]
    envelope = [1, "j", channel, "older-worker", member, seq, payload, 0]
    await redis_client.publish(keys.topic(channel), msgpack.packb(envelope, use_bin_type=True))
    return member


async def test_metadata_msgpack_cannot_carry_from_an_older_worker_stops_no_delivery(
    redis_url: str, key_prefix: str, redis_client: aioredis.Redis
) -> None:
    metrics = EncodingMetrics()
    settings = make_settings(key_prefix, redis_url)
    async with (
        PubSubHub(settings=settings, metrics=metrics) as hub,
        serve(build_app(hub)) as url,
    ):
        plain = await connect(f"{url}/ws/mixed")
        await recv_until(plain, lambda m: m == {"count": 1})
        packed = await connect(f"{url}/ws/mixed?format=msgpack&frames=tagged")
        await recv_until(plain, lambda m: m == {"count": 2})
        await _join_as_older_worker(redis_client, hub, "mixed", {"uid": 2**100})
        # The presence event cannot be packed for the msgpack client: its count still
        # comes, and so does every client's generate_object_to_send result.
        await recv_until(plain, lambda m: m == {"count": 3})
        presence = await recv_msgpack_until(
            packed, lambda m: m.get("event") == "presence" and m["count"] == 3
        )
        assert "members" not in presence
        await recv_msgpack_until(packed, lambda m: m.get("data") == {"count": 3})
        assert metrics.encoding_failures >= 1
        # Later events are not stopped either.
        third = await connect(f"{url}/ws/mixed")
        await recv_until(plain, lambda m: m == {"count": 4})
        await recv_msgpack_until(packed, lambda m: m.get("data") == {"count": 4})
        for ws in (plain, packed, third):
            await ws.close()
        await wait_for_condition(lambda: hub.fanout.local_connection_count == 0, 5)


# -- bytes: msgpack carries them, JSON clients get {"$bytes": "<base64>"} ------------------


async def test_bytes_a_msgpack_client_publishes_reach_json_clients_as_base64(
    server: str,
) -> None:
    as_json = await connect(f"{server}/ws/blobs")
    as_tagged_json = await connect(f"{server}/ws/blobs?frames=tagged")
    as_msgpack = await connect(f"{server}/ws/blobs?format=msgpack")
    await recv_until(as_json, lambda m: m == {"count": 3})
    # The test app publishes {"echo": <what the client sent>} to the channel.
    await as_msgpack.send(msgpack.packb([b"\x00\xff", "text"], use_bin_type=True))
    echo = {"echo": [{"$bytes": base64.b64encode(b"\x00\xff").decode()}, "text"]}
    assert await recv_until(as_json, lambda m: "echo" in m) == echo
    assert await recv_until(as_tagged_json, lambda m: "echo" in m.get("data", {})) == {
        "channel": "blobs",
        "data": echo,
    }
    received = await recv_msgpack_until(as_msgpack, lambda m: "echo" in m)
    assert received == {"echo": [b"\x00\xff", "text"]}
    for ws in (as_json, as_tagged_json, as_msgpack):
        await ws.close()


async def test_bytes_published_by_the_server_reach_json_clients_as_base64(
    server: str, hub: PubSubHub
) -> None:
    as_json = await connect(f"{server}/ws/files")
    as_msgpack = await connect(f"{server}/ws/files?format=msgpack")
    await recv_until(as_json, lambda m: m == {"count": 2})
    await hub.publish("files", b"\x89PNG\r\n")
    assert await recv_until(as_json, lambda m: "$bytes" in m) == {
        "$bytes": base64.b64encode(b"\x89PNG\r\n").decode()
    }
    assert await recv_msgpack_until(as_msgpack, lambda m: m == b"\x89PNG\r\n")
    await as_json.close()
    await as_msgpack.close()
