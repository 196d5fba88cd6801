"""The opt-in uvicorn protocol: broadcasts framed once, written straight to each socket."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest

from fastapi_pubsub_cluster import PubSubHub
from fastapi_pubsub_cluster.errors import CloseCode
from fastapi_pubsub_cluster.servers.uvicorn_ws import Compression, PubSubWebSocketProtocol
from tests.apps.local_app import build_app
from tests.live import close_code_of, connect, recv_until, serve
from tests.test_compression import OFFERS
from tests.test_slow_clients import BIG, stalled_client


@pytest.fixture
async def direct_server(hub: PubSubHub) -> AsyncIterator[str]:
    async with serve(build_app(hub), ws=PubSubWebSocketProtocol) as url:
        yield url


def direct_frames(hub: PubSubHub, channel: str) -> list[int]:
    return [c.frames_written_directly for c in hub.fanout.local_connections(channel)]


async def test_broadcast_is_written_directly_to_uncompressed_sockets(
    direct_server: str, hub: PubSubHub
) -> None:
    clients = [await connect(f"{direct_server}/ws/direct", compression=None) for _ in range(5)]
    packed = await connect(f"{direct_server}/ws/direct?format=msgpack", compression=None)
    for ws in clients:
        await recv_until(ws, lambda m: m == {"count": 6})
    before = sum(direct_frames(hub, "direct"))
    for n in range(10):
        await hub.publish("direct", {"n": n})
    for ws in clients:
        for n in range(10):
            assert await recv_until(ws, lambda m, n=n: "n" in m) == {"n": n}
    seen = []
    while len(seen) < 10:
        message = msgpack.unpackb(await asyncio.wait_for(packed.recv(), 5))
        if "n" in message:
            seen.append(message["n"])
    assert seen == list(range(10))
    assert sum(direct_frames(hub, "direct")) - before == 60  # every delivery took the path
    for ws in [*clients, packed]:
        await ws.close()


async def test_sockets_with_permessage_deflate_take_the_direct_path_too(
    direct_server: str, hub: PubSubHub
) -> None:
    compressed = await connect(f"{direct_server}/ws/deflate")  # offers deflate by default
    await recv_until(compressed, lambda m: m == {"count": 1})
    before = sum(direct_frames(hub, "deflate"))
    await hub.publish("deflate", {"compressed": True})
    assert await recv_until(compressed, lambda m: "compressed" in m) == {"compressed": True}
    assert sum(direct_frames(hub, "deflate")) - before == 1
    assert compressed.response is not None
    assert "permessage-deflate" in compressed.response.headers["Sec-WebSocket-Extensions"]
    await compressed.close()


async def test_a_stalled_socket_still_gets_the_slow_client_policy(hub: PubSubHub) -> None:
    strict = PubSubHub(settings=hub.settings.with_changes(send_queue_size=8))
    async with strict, serve(build_app(strict), ws=PubSubWebSocketProtocol) as url:
        slow = await stalled_client(f"{url}/ws/stall")
        fast = await connect(f"{url}/ws/stall", compression=None, max_size=None)
        await recv_until(fast, lambda m: m == {"count": 2})
        others: list[dict[str, int]] = []
        for i in range(120):
            await strict.publish("stall", {"i": i, "pad": BIG})
            await recv_until(fast, lambda m, i=i: m.get("i") == i, timeout=5, skipped=others)
        # The stalled client was dropped from the channel while the other kept up.
        if {"count": 1} not in others:
            await recv_until(fast, lambda m: m == {"count": 1}, timeout=10)
        assert await close_code_of(slow, timeout=20) == CloseCode.POLICY_VIOLATION
        await fast.close()


@pytest.mark.parametrize("backend", ["memory"])
@pytest.mark.parametrize(
    ("policy", "offer"),
    [("shared", "chromium"), ("per-socket", "chromium"), ("per-socket", "small-window")],
)
async def test_a_compressing_client_that_falls_behind_and_catches_up_gets_every_message(
    hub: PubSubHub, policy: Compression, offer: str
) -> None:
    """While the client pushes back, its frames go through uvicorn's sends; once it catches
    up, straight to the socket again. A context kept per socket must compress them in the
    order they reach the wire, whichever path each took: the client inflates all, in order."""
    patient = PubSubHub(settings=hub.settings.with_changes(send_queue_size=100_000))
    shared_text = os.urandom(1500).hex()  # what a kept context can refer back to

    def payload(n: int) -> dict[str, Any]:
        return {"n": n, "pad": shared_text[: 2000 + n % 900] + os.urandom(4000).hex()}

    protocol = PubSubWebSocketProtocol.with_compression(policy)
    async with patient, serve(build_app(patient), ws=protocol) as url:
        ws = await connect(
            f"{url}/ws/behind",
            compression=None,
            extensions=OFFERS[offer],
            max_size=None,
            max_queue=None,
        )
        await recv_until(ws, lambda m: m == {"count": 1})
        (connection,) = patient.fanout.local_connections("behind")
        initial = connection.frames_written_directly
        sent: list[dict[str, Any]] = []

        def direct() -> int:
            return connection.frames_written_directly - initial

        ws.transport.pause_reading()
        while direct() == len(sent):  # until the socket pushes back
            assert len(sent) < 20_000, "the socket never pushed back"
            sent.append(payload(len(sent)))
            await patient.publish("behind", sent[-1])
        for _ in range(200):
            sent.append(payload(len(sent)))
            await patient.publish("behind", sent[-1])
        ws.transport.resume_reading()
        for _ in range(500):  # while it catches up
            sent.append(payload(len(sent)))
            await patient.publish("behind", sent[-1])
            await asyncio.sleep(0)  # a turn of the loop: the client drains meanwhile
        received = [await recv_until(ws, lambda m: "n" in m) for _ in sent]
        assert received == sent
        assert 0 < direct() < len(sent)  # both paths carried some

        # Caught up: straight to the socket again.
        before = direct()
        await patient.publish("behind", {"n": -1})
        assert await recv_until(ws, lambda m: "n" in m) == {"n": -1}
        assert direct() == before + 1
        await ws.close()
