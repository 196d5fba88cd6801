"""The direct path writes a socket's frames of one loop iteration together; nothing the
server writes otherwise (ASGI sends, close frames) may overtake them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from fastapi_pubsub_cluster import PubSubHub
from fastapi_pubsub_cluster.errors import CloseCode
from fastapi_pubsub_cluster.servers.uvicorn_ws import PubSubWebSocketProtocol
from tests.apps.local_app import CountingSocket, build_app
from tests.conftest import make_settings
from tests.live import close_code_of, connect, recv_until, serve, stalled_client
from tests.test_compression import OFFERS
from tests.test_slow_clients import BIG

POLICIES = [("off", "uncompressed"), ("shared", "chromium"), ("per-socket", "firefox")]


class PublishesThenSpeaks(CountingSocket):
    """On ``{"n": n, "then": ...}``: publishes ``{"published": n}`` to its channel (in
    memory, handed to every socket at once), then sends ``{"said": n}`` to its own client
    through ASGI (``"say"``) or closes the socket (``"close"``)."""

    async def on_message(self, data: Any) -> None:
        await self.publish({"published": data["n"]})
        if data["then"] == "say":
            await self.send_message(json.dumps({"said": data["n"]}))
        elif data["then"] == "close":
            await self.close(4000, "done")


@pytest.fixture
async def memory_hub(key_prefix: str) -> AsyncIterator[PubSubHub]:
    async with PubSubHub(settings=make_settings(key_prefix, None)) as hub:
        yield hub


@asynccontextmanager
async def lone_client(
    hub: PubSubHub, policy: Any, offer: str, channel: str
) -> AsyncIterator[ClientConnection]:
    """One client offering ``offer`` in ``channel`` of a :class:`PublishesThenSpeaks` app
    served with the direct protocol under ``policy``, once it counts."""
    protocol = PubSubWebSocketProtocol.with_compression(policy)
    async with serve(build_app(hub, PublishesThenSpeaks), ws=protocol) as url:
        ws = await connect(f"{url}/ws/{channel}", compression=None, extensions=OFFERS[offer])
        await recv_until(ws, lambda m: m == {"count": 1})
        yield ws


@pytest.mark.parametrize(("policy", "offer"), POLICIES)
async def test_a_frame_sent_through_asgi_never_overtakes_a_queued_broadcast(
    memory_hub: PubSubHub, policy: Any, offer: str
) -> None:
    async with lone_client(memory_hub, policy, offer, "order") as ws:
        for n in range(20):
            await ws.send(json.dumps({"n": n, "then": "say"}))
        received = []
        while len(received) < 40:
            received.append(await recv_until(ws, lambda m: "published" in m or "said" in m))
        expected = [m for n in range(20) for m in ({"published": n}, {"said": n})]
        assert received == expected
        await ws.close()


@pytest.mark.parametrize(("policy", "offer"), POLICIES)
async def test_a_close_right_after_a_broadcast_comes_after_it(
    memory_hub: PubSubHub, policy: Any, offer: str
) -> None:
    async with lone_client(memory_hub, policy, offer, "closing") as ws:
        await ws.send(json.dumps({"n": 7, "then": "close"}))
        assert await recv_until(ws, lambda m: "published" in m) == {"published": 7}
        with pytest.raises(websockets.ConnectionClosed):
            await recv_until(ws, lambda m: True)
        assert ws.close_code == 4000


async def test_frames_held_for_one_write_stay_bounded_for_a_client_that_stopped_reading(
    key_prefix: str,
) -> None:
    """Published in one loop iteration, megabytes for a client that reads nothing are not
    held back for one write: the socket applies backpressure at once, and the slow-client
    policy disconnects the client without any later message."""
    settings = make_settings(key_prefix, None, send_queue_size=8)
    hub = PubSubHub(settings=settings)
    async with hub, serve(build_app(hub), ws=PubSubWebSocketProtocol) as url:
        slow = await stalled_client(f"{url}/ws/flood")
        for n in range(60):  # in memory, publish() never waits: one iteration
            await hub.publish("flood", {"n": n, "pad": BIG})
        assert await close_code_of(slow, timeout=20) == CloseCode.POLICY_VIOLATION
