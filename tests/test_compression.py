"""permessage-deflate on the direct path: each policy with the offers real clients make."""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection
from websockets.extensions.base import ClientExtensionFactory
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from fastapi_pubsub_cluster import PubSubHub
from fastapi_pubsub_cluster.errors import ConfigurationError
from fastapi_pubsub_cluster.servers.uvicorn_ws import (
    COMPRESSION_ENV,
    Compression,
    PubSubWebSocketProtocol,
    compression_from_env,
)
from tests.apps.local_app import build_app
from tests.live import close_code_of, connect, recv_until, serve

#: The offers as browsers and common clients send them (Sec-WebSocket-Extensions).
OFFERS: dict[str, list[ClientExtensionFactory] | None] = {
    # Chromium and Node's `ws`: "permessage-deflate; client_max_window_bits"
    "chromium": [ClientPerMessageDeflateFactory(client_max_window_bits=True)],
    # Firefox: "permessage-deflate"
    "firefox": [ClientPerMessageDeflateFactory(client_max_window_bits=None)],
    # A client that wants a small server window (less memory to decompress).
    "small-window": [ClientPerMessageDeflateFactory(server_max_window_bits=10)],
    # A client that itself asks the server not to keep its context.
    "no-takeover": [ClientPerMessageDeflateFactory(server_no_context_takeover=True)],
    "uncompressed": None,
}
SMALL = {"kind": "small", "text": "hello, world " * 6}
LARGE = {
    "kind": "large",
    "rows": [{"id": i, "name": f"user-{i}", "score": i * 7} for i in range(300)],
}


class WireCounting(ClientConnection):
    """A websockets client connection that keeps the raw bytes it receives."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wire = bytearray()

    def data_received(self, data: bytes) -> None:
        self.wire += data
        super().data_received(data)


async def open_client(url: str, offer: str) -> WireCounting:
    ws = await connect(
        url,
        compression=None,
        extensions=OFFERS[offer],
        max_size=None,
        create_connection=WireCounting,
    )
    assert isinstance(ws, WireCounting)
    return ws


def negotiated(ws: ClientConnection) -> str:
    assert ws.response is not None
    return ws.response.headers.get("Sec-WebSocket-Extensions", "")


@asynccontextmanager
async def serving(hub: PubSubHub, policy: Compression, **options: Any) -> AsyncIterator[str]:
    """The hub's app under uvicorn with the direct-write protocol and ``policy``."""
    protocol = PubSubWebSocketProtocol.with_compression(policy)
    async with serve(build_app(hub), ws=protocol, **options) as url:
        yield url


def direct_frames(hub: PubSubHub, channel: str) -> int:
    return sum(c.frames_written_directly for c in hub.fanout.local_connections(channel))


async def fan_out_to_every_offer(hub: PubSubHub, url: str, channel: str) -> dict[str, WireCounting]:
    clients = {offer: await open_client(f"{url}/ws/{channel}", offer) for offer in OFFERS}
    for ws in clients.values():
        await recv_until(ws, lambda m: m == {"count": len(OFFERS)})
    before = direct_frames(hub, channel)
    for ws in clients.values():
        ws.wire.clear()
    for payload in (SMALL, LARGE, SMALL):
        await hub.publish(channel, payload)
    for offer, ws in clients.items():
        for payload in (SMALL, LARGE, SMALL):
            assert await recv_until(ws, lambda m: "kind" in m) == payload, offer
    # Every delivery, compressed or not, took the direct path.
    assert direct_frames(hub, channel) - before == 3 * len(OFFERS)
    return clients


@pytest.mark.parametrize("backend", ["memory"])
async def test_shared_compression_serves_every_offer_and_plain_clients_in_one_channel(
    hub: PubSubHub,
) -> None:
    async with serving(hub, "shared") as url:
        clients = await fan_out_to_every_offer(hub, url, "shared")
        for offer, ws in clients.items():
            header = negotiated(ws)
            if offer == "uncompressed":
                assert header == ""
            else:
                assert header.startswith("permessage-deflate")
                assert "server_no_context_takeover" in header
            await ws.close()


@pytest.mark.parametrize("backend", ["memory"])
async def test_shared_compression_writes_the_same_frames_to_sockets_with_the_same_parameters(
    hub: PubSubHub,
) -> None:
    async with serving(hub, "shared") as url:
        clients = await fan_out_to_every_offer(hub, url, "same")
        # Chromium's and Firefox's offers end with the same server parameters.
        assert clients["chromium"].wire == clients["firefox"].wire
        assert clients["chromium"].wire != clients["uncompressed"].wire
        # Compressed: the large payload shrinks well below what plain clients receive.
        assert len(clients["chromium"].wire) < len(clients["uncompressed"].wire) / 2
        for ws in clients.values():
            await ws.close()


@pytest.mark.parametrize("backend", ["memory"])
async def test_per_socket_compression_keeps_a_context_per_socket(
    hub: PubSubHub,
) -> None:
    async with serving(hub, "per-socket") as url:
        clients = await fan_out_to_every_offer(hub, url, "own")
        header = negotiated(clients["chromium"])
        assert header.startswith("permessage-deflate")
        assert "server_no_context_takeover" not in header
        assert "server_no_context_takeover" in negotiated(clients["no-takeover"])
        assert len(clients["chromium"].wire) < len(clients["uncompressed"].wire) / 2
        for ws in clients.values():
            await ws.close()


@pytest.mark.parametrize("backend", ["memory"])
async def test_compression_off_declines_every_offer(hub: PubSubHub) -> None:
    async with serving(hub, "off") as url:
        clients = await fan_out_to_every_offer(hub, url, "off")
        assert {negotiated(ws) for ws in clients.values()} == {""}
        for ws in clients.values():
            await ws.close()


@pytest.mark.parametrize("backend", ["memory"])
async def test_uvicorns_deflate_switch_wins_over_the_policy(
    hub: PubSubHub,
) -> None:
    async with serving(hub, "shared", ws_per_message_deflate=False) as url:
        ws = await open_client(f"{url}/ws/switch", "chromium")
        await recv_until(ws, lambda m: m == {"count": 1})
        assert negotiated(ws) == ""
        await ws.close()


@pytest.mark.parametrize("backend", ["memory"])
async def test_a_compressing_client_can_still_send(hub: PubSubHub) -> None:
    async with serving(hub, "shared") as url:
        sender = await open_client(f"{url}/ws/echo", "chromium")
        listener = await open_client(f"{url}/ws/echo", "firefox")
        await recv_until(listener, lambda m: m == {"count": 2})
        await sender.send(json.dumps({"said": "x" * 5000}))
        assert await recv_until(listener, lambda m: "echo" in m) == {"echo": {"said": "x" * 5000}}
        await sender.close()
        await listener.close()


def test_the_policy_comes_from_the_environment() -> None:
    assert compression_from_env({}) == "shared"
    assert compression_from_env({COMPRESSION_ENV: "Per-Socket"}) == "per-socket"
    assert compression_from_env({COMPRESSION_ENV: "off"}) == "off"
    with pytest.raises(ConfigurationError, match=COMPRESSION_ENV):
        compression_from_env({COMPRESSION_ENV: "zstd"})


def test_the_gunicorn_worker_negotiates_deflate_under_the_policy() -> None:
    from fastapi_pubsub_cluster.servers.gunicorn_worker import PubSubUvicornWorker

    config = uvicorn.Config("tests.apps.local_app:app", **PubSubUvicornWorker.CONFIG_KWARGS)
    assert config.ws_per_message_deflate is True
    assert config.ws == "fastapi_pubsub_cluster.servers.uvicorn_ws:PubSubWebSocketProtocol"


# -- hostile compressed input ---------------------------------------------------------------


def masked_text_frame(payload: bytes, *, rsv1: bool) -> bytes:
    """A client's text frame built by hand (client libraries refuse to set RSV1 themselves)."""
    first = 0x80 | (0x40 if rsv1 else 0) | 0x1  # FIN, RSV1 (compressed), text
    size = len(payload)
    assert size < 2**16
    header = bytes([first, 0x80 | size]) if size < 126 else bytes([first, 0xFE]) + size.to_bytes(2)
    key = os.urandom(4)
    return header + key + bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))


def deflated(data: bytes) -> bytes:
    """``data`` as a permessage-deflate payload (raw deflate, without the final 00 00 ff ff)."""
    compressor = zlib.compressobj(wbits=-15)
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def sends_text(size: int) -> Callable[[ClientConnection], Awaitable[None]]:
    async def send(ws: ClientConnection) -> None:
        await ws.send('"' + " " * size + '"')  # compressed by the client to a few KB

    return send


def writes_raw(frame: bytes) -> Callable[[ClientConnection], Awaitable[None]]:
    async def send(ws: ClientConnection) -> None:
        ws.transport.write(frame)

    return send


#: (the offer the hostile client makes, what it sends, the close code it must get)
HOSTILE: dict[str, tuple[str, Callable[[ClientConnection], Awaitable[None]], int]] = {
    "inflates past max_message_bytes": ("chromium", sends_text(4 * 2**20), 1009),
    "inflates past uvicorn's frame limit": ("chromium", sends_text(64 * 2**20), 1009),
    "RSV1 on data that is not deflate": (
        "chromium",
        writes_raw(masked_text_frame(b"\xff\xfe\xfd not deflate", rsv1=True)),
        1002,
    ),
    "RSV1 without deflate negotiated": (
        "uncompressed",
        writes_raw(masked_text_frame(deflated(b'{"a": 1}'), rsv1=True)),
        1002,
    ),
}


@pytest.mark.parametrize("backend", ["memory"])
@pytest.mark.parametrize("case", list(HOSTILE))
async def test_a_hostile_compressed_frame_closes_its_sender_only(hub: PubSubHub, case: str) -> None:
    offer, send, code = HOSTILE[case]
    async with serving(hub, "shared") as url:
        good = await open_client(f"{url}/ws/hostile", "chromium")
        await recv_until(good, lambda m: m == {"count": 1})
        bad = await open_client(f"{url}/ws/hostile", offer)
        await recv_until(good, lambda m: m == {"count": 2})
        await send(bad)
        assert await close_code_of(bad) == code
        if code == 1009:
            # Cut at the library's limit, however far past it the message would inflate:
            # a few KB of deflate must not cost the worker uvicorn's 16 MiB of inflating.
            assert str(hub.settings.max_message_bytes) in (bad.close_reason or ""), bad.close_reason
        # Its leave reaches the others, who go on receiving, compressed.
        await recv_until(good, lambda m: m == {"count": 1})
        await hub.publish("hostile", SMALL)
        assert await recv_until(good, lambda m: "kind" in m) == SMALL
        await good.close()
