"""Presence metadata: a small JSON object per connection, in presence reads, in the mirror
and in join/leave events; on every backend, and across workers on Redis."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI, WebSocket

from fastapi_pubsub_cluster import BasePubSubWebSocket, PubSubHub, RedisBackend
from fastapi_pubsub_cluster.errors import CloseCode
from tests.apps.local_app import build_app
from tests.live import (
    close_code_of,
    connect,
    connect_identified,
    recv_until,
    serve,
    wait_for_async_condition,
    wait_for_condition,
)


async def test_presence_returns_each_connections_metadata(server: str, hub: PubSubHub) -> None:
    ann, ann_id = await connect_identified(f"{server}/id/team?name=ann")
    plain, plain_id = await connect_identified(f"{server}/id/team")
    assert await hub.presence("team") == {ann_id: {"name": "ann"}, plain_id: None}
    # members() keeps returning ids only.
    assert await hub.members("team") == {ann_id, plain_id}
    await wait_for_condition(lambda: len(hub.get("team")) == 2, 5)
    assert hub.presence_of("team") == {ann_id: {"name": "ann"}, plain_id: None}
    await ann.close()
    await wait_for_condition(lambda: len(hub.get("team")) == 1, 5)
    assert hub.presence_of("team") == {plain_id: None}
    assert await hub.presence("team") == {plain_id: None}
    await plain.close()


async def test_metadata_over_the_limit_closes_1008_and_registers_nothing(
    server: str, hub: PubSubHub
) -> None:
    big = json.dumps({"bio": "x" * 2000})
    ws = await connect(f"{server}/id/limits?meta={quote(big)}")
    assert await close_code_of(ws) == CloseCode.POLICY_VIOLATION
    assert ws.close_reason is not None and "presence metadata" in ws.close_reason
    assert await hub.count("limits") == 0
    assert hub.fanout.local_connection_count == 0
    just_fits = json.dumps({"bio": "x" * 1000})
    ws, connection_id = await connect_identified(f"{server}/id/limits?meta={quote(just_fits)}")
    assert await hub.presence("limits") == {connection_id: {"bio": "x" * 1000}}
    await ws.close()


def _nested(depth: int) -> dict[str, Any]:
    metadata: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        metadata = {"in": metadata}
    return metadata


#: Metadata a socket may not register: each is not encodable in some wire format (JSON,
#: msgpack, UTF-8), or nests deeper than client frames may.
UNENCODABLE_METADATA: dict[str, Any] = {
    "int beyond 64 bits": {"uid": 2**128 + 1},
    "lone surrogate": {"name": "\ud800"},
    "nested past the recursion limit": _nested(5000),
    "nested one level too deep": _nested(65),
    "bytes": {"token": b"\x00"},
    "NaN": {"score": float("nan")},
    "non-string key": {1: "one"},
}


class MetadataSocket(BasePubSubWebSocket):
    """Registers the metadata named by ``?kind=`` (a key of UNENCODABLE_METADATA)."""

    async def presence_metadata(self) -> dict[str, Any] | None:
        kind = self.websocket.query_params.get("kind", "")
        if kind == "nested to the bound":
            return _nested(64)
        return dict(UNENCODABLE_METADATA[kind])

    async def generate_object_to_send(self) -> Any:
        return {"count": len(self.connection_manager.get(self.channel_id))}


def _metadata_app(hub: PubSubHub) -> FastAPI:
    app = build_app(hub)

    @app.websocket("/meta/{channel}")
    async def metadata_socket(websocket: WebSocket, channel: str) -> None:
        await MetadataSocket(websocket, channel, hub=hub).run()

    return app


@pytest.mark.parametrize("kind", sorted(UNENCODABLE_METADATA))
async def test_metadata_not_encodable_in_every_format_closes_1008_and_registers_nothing(
    hub: PubSubHub, kind: str
) -> None:
    async with serve(_metadata_app(hub)) as url:
        # A msgpack client in the channel: metadata it cannot receive must not get in.
        listener = await connect(f"{url}/ws/odd?format=msgpack&frames=tagged")
        await wait_for_condition(lambda: len(hub.get("odd")) == 1, 5)
        ws = await connect(f"{url}/meta/odd?kind={quote(kind)}&format=msgpack")
        assert await close_code_of(ws) == CloseCode.POLICY_VIOLATION
        assert ws.close_reason is not None and "presence metadata" in ws.close_reason
        assert len(await hub.members("odd")) == 1
        assert hub.fanout.local_connection_count == 1
        await listener.close()


class SurrogateUserSocket(BasePubSubWebSocket):
    """Says its user id is a lone surrogate: a string no UTF-8 store can hold."""

    async def get_user_id(self) -> str | None:
        return "user-\ud800"


async def test_a_user_id_that_is_not_utf8_closes_1008_and_registers_nothing(
    hub: PubSubHub,
) -> None:
    app = build_app(hub)

    @app.websocket("/surrogate/{channel}")
    async def surrogate_socket(websocket: WebSocket, channel: str) -> None:
        await SurrogateUserSocket(websocket, channel, hub=hub).run()

    async with serve(app) as url:
        ws = await connect(f"{url}/surrogate/odd")
        assert await close_code_of(ws) == CloseCode.POLICY_VIOLATION
        assert ws.close_reason is not None and "user id" in ws.close_reason
        assert await hub.members("odd") == frozenset()
        assert hub.fanout.local_connection_count == 0


async def test_metadata_nested_to_the_bound_is_registered(hub: PubSubHub) -> None:
    async with serve(_metadata_app(hub)) as url:
        ws = await connect(f"{url}/meta/deep?kind={quote('nested to the bound')}")
        await wait_for_async_condition(lambda: _has_members(hub, "deep", 1), 5)
        assert list((await hub.presence("deep")).values()) == [_nested(64)]
        await ws.close()


async def _has_members(hub: PubSubHub, channel: str, count: int) -> bool:
    return len(await hub.members(channel)) == count


# -- across workers on one Redis ---------------------------------------------------------


async def test_join_and_leave_events_carry_metadata_to_other_workers(
    two_hubs: tuple[PubSubHub, PubSubHub], redis_client: aioredis.Redis
) -> None:
    here, there = two_hubs
    async with serve(build_app(here)) as url_here, serve(build_app(there)) as url_there:
        local, local_id = await connect_identified(f"{url_here}/id/hall?name=hugo")
        # The other worker's mirror is loaded from Redis (the snapshot carries metadata) ...
        remote, remote_id = await connect_identified(f"{url_there}/id/hall?name=iris")
        await wait_for_condition(lambda: len(there.get("hall")) == 2, 5)
        assert there.presence_of("hall") == {
            local_id: {"name": "hugo"},
            remote_id: {"name": "iris"},
        }
        # ... and kept current by join events, which carry it.
        await wait_for_condition(lambda: len(here.get("hall")) == 2, 5)
        assert here.presence_of("hall")[remote_id] == {"name": "iris"}
        await remote.close()
        await wait_for_condition(lambda: len(here.get("hall")) == 1, 5)
        assert here.presence_of("hall") == {local_id: {"name": "hugo"}}
        backend = here.backend
        assert isinstance(backend, RedisBackend)
        stored = await redis_client.hgetall(backend.keys.meta("hall"))
        assert {k.decode(): json.loads(v) for k, v in stored.items()} == {
            local_id: {"name": "hugo"}
        }
        await local.close()
        await wait_for_async_condition(lambda: _empty(redis_client, backend, "hall"), 5)


async def _empty(redis_client: aioredis.Redis, backend: RedisBackend, channel: str) -> bool:
    return await redis_client.hlen(backend.keys.meta(channel)) == 0


async def test_reaping_a_worker_removes_its_metadata(
    two_hubs: tuple[PubSubHub, PubSubHub], redis_client: aioredis.Redis
) -> None:
    here, there = two_hubs
    async with serve(build_app(there)) as url_there:
        ws, _ = await connect_identified(f"{url_there}/id/gone?name=jo")
        backend = here.backend
        assert isinstance(backend, RedisBackend)
        assert await redis_client.hlen(backend.keys.meta("gone")) == 1
        assert await backend.reap(there.fanout.worker_id) == 1
        assert await here.presence("gone") == {}
        assert await redis_client.hlen(backend.keys.meta("gone")) == 0
        await ws.close()


async def test_lost_metadata_is_restored_by_reconciliation(
    two_hubs: tuple[PubSubHub, PubSubHub], redis_client: aioredis.Redis
) -> None:
    here, there = two_hubs
    async with serve(build_app(there)) as url_there:
        ws, connection_id = await connect_identified(f"{url_there}/id/heal?name=kim")
        backend = here.backend
        assert isinstance(backend, RedisBackend)
        keys = backend.keys
        # Redis loses the channel's entries (e.g. a failover to a replica that lagged).
        await redis_client.delete(keys.members("heal"), keys.owners("heal"), keys.meta("heal"))
        assert await here.presence("heal") == {}
        await wait_for_async_condition(lambda: _restored(here, connection_id), 20)
        assert await here.presence("heal") == {connection_id: {"name": "kim"}}
        await ws.close()


async def _restored(hub: PubSubHub, connection_id: str) -> bool:
    return connection_id in await hub.presence("heal")


# -- two real uvicorn workers ------------------------------------------------------------


@pytest.mark.slow
async def test_presence_read_on_one_uvicorn_worker_shows_another_workers_metadata(
    two_workers: tuple[str, str],
) -> None:
    a, b = two_workers
    on_b = await connect(b.replace("http://", "ws://") + "/id/desk?name=lee")
    me = (await recv_until(on_b, lambda m: "me" in m))["me"]
    async with httpx.AsyncClient() as http:
        reply = (await http.get(f"{a}/presence/desk")).json()
    assert reply["presence"] == {me: {"name": "lee"}}
    await on_b.close()
