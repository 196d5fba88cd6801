"""A hub runs again: one TestClient session after another, with or without ``with``, and
nothing of one session reaches the next."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI, WebSocket
from fastapi.testclient import TestClient

from fastapi_pubsub_cluster import BasePubSubWebSocket, PubSubHub, PubSubSettings
from tests.conftest import make_settings


class Counter(BasePubSubWebSocket):
    async def generate_object_to_send(self) -> Any:
        return {"count": len(self.connection_manager.get(self.channel_id))}


def build(settings: PubSubSettings) -> tuple[PubSubHub, FastAPI]:
    """What a user's module holds: one hub, one app, built once at import. (The socket
    names its hub: FastAPI's caches keep earlier tests' apps, and their hubs, alive.)"""
    hub = PubSubHub(settings=settings)
    app = FastAPI(lifespan=hub.lifespan)

    @app.websocket("/ws/{channel}")
    async def endpoint(websocket: WebSocket, channel: str) -> None:
        await Counter(websocket, channel, hub=hub).run()

    @app.post("/publish/{channel}")
    async def publish(channel: str, body: dict[str, Any]) -> dict[str, int]:
        await hub.publish(channel, body)
        return {"members": await hub.count(channel)}

    return hub, app


@pytest.fixture
def restart_settings(backend: str, key_prefix: str, request: pytest.FixtureRequest) -> Any:
    url = request.getfixturevalue("redis_url") if backend == "redis" else None
    return make_settings(key_prefix, url)


def redis_keys(redis_url: str, key_prefix: str) -> list[bytes]:
    """The keys this test's hub left in Redis (read with a client of this test's own)."""

    async def scan() -> list[bytes]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return [key async for key in client.scan_iter(match=f"{key_prefix}:*")]
        finally:
            await client.aclose()

    return asyncio.run(scan())


def presence_left(redis_url: str, key_prefix: str) -> list[bytes]:
    """Presence and membership keys (channel sets, connection registrations) still there."""
    return [
        key
        for key in redis_keys(redis_url, key_prefix)
        if key.endswith((b":members", b":owners", b":meta", b":connections", b":alive"))
    ]


def one_session(app: FastAPI, channel: str) -> None:
    with TestClient(app) as client, client.websocket_connect(f"/ws/{channel}") as first:
        assert first.receive_json() == {"count": 1}
        with client.websocket_connect(f"/ws/{channel}") as second:
            assert first.receive_json() == {"count": 2}
            assert second.receive_json() == {"count": 2}
            response = client.post(f"/publish/{channel}", json={"n": 1})
            assert response.json() == {"members": 2}
            assert first.receive_json() == {"n": 1}
            assert second.receive_json() == {"n": 1}
        assert first.receive_json() == {"count": 1}


def test_a_hub_runs_in_one_testclient_session_after_another(restart_settings: Any) -> None:
    hub, app = build(restart_settings)
    for _ in range(3):
        one_session(app, "room")
        assert not hub.started


def test_nothing_of_a_session_is_left_in_redis(
    redis_url: str, key_prefix: str, redis_client: aioredis.Redis
) -> None:
    _hub, app = build(make_settings(key_prefix, redis_url))
    for _ in range(2):
        one_session(app, "room")
        assert presence_left(redis_url, key_prefix) == []


def test_a_session_starts_with_no_connections_subscribers_or_tasks(restart_settings: Any) -> None:
    hub, app = build(restart_settings)
    one_session(app, "room")
    with TestClient(app):
        assert hub.started
        assert hub.fanout.local_connection_count == 0
        assert hub.fanout.mirrored_channels == []
        assert hub.get("room") == frozenset()


def test_a_subscriber_of_one_session_ends_with_it(restart_settings: Any) -> None:
    hub, app = build(restart_settings)
    received: list[Any] = []

    @app.get("/listen/{channel}")
    async def listen(channel: str) -> dict[str, str]:
        ready = asyncio.Event()

        async def read() -> None:
            async with hub.subscribe(channel) as messages:
                ready.set()
                async for message in messages:
                    received.append(message)

        asyncio.get_running_loop().create_task(read())
        await asyncio.wait_for(ready.wait(), 5)
        return {}

    with TestClient(app) as client:
        client.get("/listen/room")
        client.post("/publish/room", json={"n": 1})
    # The subscriber's iteration ended when the hub stopped; the next session starts anew.
    with TestClient(app) as client:
        client.post("/publish/room", json={"n": 2})
    assert received == [{"n": 1}]


def test_testclient_without_with_after_a_session(restart_settings: Any) -> None:
    _hub, app = build(restart_settings)
    one_session(app, "room")
    client = TestClient(app)  # no lifespan: the hub starts on first use
    for _ in range(2):  # each call runs on an event loop of its own
        with client.websocket_connect("/ws/room") as ws:
            assert ws.receive_json() == {"count": 1}
            ws.send_json({"hello": "world"})


def test_testclient_without_with_publishes_to_an_open_socket(restart_settings: Any) -> None:
    _hub, app = build(restart_settings)
    client = TestClient(app)
    with client.websocket_connect("/ws/room") as ws:
        assert ws.receive_json() == {"count": 1}
        # This request runs on another event loop than the socket's.
        assert client.post("/publish/room", json={"n": 1}).json() == {"members": 1}
        assert ws.receive_json() == {"n": 1}
    one_session(app, "room")


def test_a_hub_started_on_first_use_stops_with_its_event_loop(
    redis_url: str, key_prefix: str, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    hub, app = build(make_settings(key_prefix, redis_url))
    client = TestClient(app)
    for _ in range(2):
        with client.websocket_connect("/ws/room") as ws:
            assert ws.receive_json() == {"count": 1}
        # The call's event loop ended, and the hub's run with it: nothing left in Redis.
        assert not hub.started
        assert presence_left(redis_url, key_prefix) == []
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []


def test_without_with_a_socket_finds_the_hub_whose_lifespan_the_app_has(
    restart_settings: Any,
) -> None:
    # Other tests' hubs are alive too: the app's lifespan says which one is its own.
    hub = PubSubHub(settings=restart_settings)
    app = FastAPI(lifespan=hub.lifespan)

    @app.websocket("/ws/{channel}")
    async def endpoint(websocket: WebSocket, channel: str) -> None:
        await Counter(websocket, channel).run()

    with TestClient(app).websocket_connect("/ws/room") as ws:
        assert ws.receive_json() == {"count": 1}
        assert hub.started
