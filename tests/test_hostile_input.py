"""Hostile client input, over real sockets: strict JSON both ways, nesting bounds, resume ids
beyond Redis' range, and relayed messages at the size limit."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
from fastapi import FastAPI, WebSocket

from fastapi_pubsub_cluster import (
    BasePubSubWebSocket,
    InvalidChannelError,
    MalformedMessageError,
    PubSubHub,
    PubSubSettings,
)
from fastapi_pubsub_cluster.errors import CloseCode
from fastapi_pubsub_cluster.payloads import MAX_NESTING_DEPTH
from fastapi_pubsub_cluster.servers.uvicorn_ws import PubSubWebSocketProtocol
from tests.apps.local_app import build_app
from tests.conftest import make_settings
from tests.live import close_code_of, connect, recv_until, serve


async def joined(url: str) -> Any:
    ws = await connect(url)
    await recv_until(ws, lambda m: "count" in m)
    return ws


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# -- 1. strict JSON ------------------------------------------------------------------------


async def test_nan_and_infinity_in_a_text_frame_close_it_1007(server: str) -> None:
    ws = await joined(f"{server}/ws/nan")
    await ws.send('{"v": NaN, "w": Infinity}')
    assert await close_code_of(ws) == CloseCode.INVALID_PAYLOAD


async def test_number_literal_beyond_float_range_closes_1007(server: str) -> None:
    ws = await joined(f"{server}/ws/huge")
    await ws.send('{"v": 1e999}')  # Python would read it as inf
    assert await close_code_of(ws) == CloseCode.INVALID_PAYLOAD


async def test_integer_beyond_64_bits_closes_1007(server: str) -> None:
    ws = await joined(f"{server}/ws/bigint")
    await ws.send(json.dumps({"v": 2**64}))  # msgpack cannot relay it
    assert await close_code_of(ws) == CloseCode.INVALID_PAYLOAD


async def test_nan_in_a_msgpack_frame_closes_1007(server: str) -> None:
    ws = await joined(f"{server}/ws/binnan")
    await ws.send(msgpack.packb({"v": math.nan}))
    assert await close_code_of(ws) == CloseCode.INVALID_PAYLOAD


async def test_a_bytes_map_key_in_a_msgpack_frame_closes_1007(server: str) -> None:
    # JSON has no form for a bytes key: a JSON client in the channel could never get it.
    ws = await joined(f"{server}/ws/binkey")
    await ws.send(msgpack.packb({b"k": 1}, use_bin_type=True))
    assert await close_code_of(ws) == CloseCode.INVALID_PAYLOAD


async def test_bytes_values_and_integer_keys_in_a_msgpack_frame_are_accepted(
    server: str,
) -> None:
    ws = await joined(f"{server}/ws/binok")
    await ws.send(msgpack.packb({"v": b"\x00\x01", 1: "one"}, use_bin_type=True))
    echo = await recv_until(ws, lambda m: "echo" in m)
    assert echo["echo"] == {"v": {"$bytes": "AAE="}, "1": "one"}


async def test_no_client_receives_a_nan_that_another_client_sent(server: str) -> None:
    listener = await joined(f"{server}/ws/strict")
    await (await joined(f"{server}/ws/strict")).send('{"v": NaN}')
    await (await joined(f"{server}/ws/strict")).send('{"marker": 1.5}')

    def refuse(name: str) -> None:
        raise AssertionError(f"a client received the non-JSON constant {name}")

    while True:
        message = json.loads(await asyncio.wait_for(listener.recv(), 5), parse_constant=refuse)
        if message == {"echo": {"marker": 1.5}}:
            break


async def test_publishing_nan_raises_malformed_message_error_and_sends_nothing(
    server: str, hub: PubSubHub
) -> None:
    ws = await joined(f"{server}/ws/pubnan")
    for bad in ({"v": math.nan}, [math.inf], {"deep": {"x": -math.inf}}):
        with pytest.raises(MalformedMessageError):
            await hub.publish("pubnan", bad)
    await hub.publish("pubnan", {"after": True})
    skipped: list[Any] = []
    await recv_until(ws, lambda m: m == {"after": True}, skipped=skipped)
    assert all("count" in m for m in skipped)  # nothing of the refused publications


# -- 2. nesting ------------------------------------------------------------------------------


async def test_five_thousand_nested_brackets_close_1007(server: str) -> None:
    ws = await joined(f"{server}/ws/deep")
    await ws.send("[" * 5000)
    assert await close_code_of(ws) == CloseCode.INVALID_PAYLOAD


async def test_valid_json_nested_one_level_too_deep_closes_1007(server: str) -> None:
    ws = await joined(f"{server}/ws/deeper")
    await ws.send(nested(MAX_NESTING_DEPTH + 1))
    assert await close_code_of(ws) == CloseCode.INVALID_PAYLOAD


async def test_json_nested_to_the_bound_is_relayed(server: str) -> None:
    ws = await joined(f"{server}/ws/bound")
    # The relay wraps it in {"echo": ...}: one level more on the way out is fine.
    await ws.send(nested(MAX_NESTING_DEPTH))
    echo = await recv_until(ws, lambda m: "echo" in m)
    assert json.dumps(echo["echo"], separators=(",", ":")) == nested(MAX_NESTING_DEPTH)


async def test_msgpack_nested_one_level_too_deep_closes_1007(server: str) -> None:
    ws = await joined(f"{server}/ws/deepbin")
    value: Any = []
    for _ in range(MAX_NESTING_DEPTH):
        value = [value]
    await ws.send(msgpack.packb(value))
    assert await close_code_of(ws) == CloseCode.INVALID_PAYLOAD


# -- 3. resume ids ---------------------------------------------------------------------------


@pytest.mark.parametrize("since", ["18446744073709551616-0", "0-18446744073709551616"])
def test_resume_id_beyond_64_bits_is_invalid(since: str) -> None:
    with pytest.raises(InvalidChannelError):
        PubSubSettings.validate_stream_id(since)


def test_resume_id_at_64_bits_is_valid() -> None:
    top = f"{2**64 - 1}-{2**64 - 1}"
    assert PubSubSettings.validate_stream_id(top) == top


async def test_resume_id_beyond_64_bits_closes_1008(redis_url: str, key_prefix: str) -> None:
    settings = make_settings(key_prefix, redis_url, history_channels="hist")
    async with PubSubHub(settings=settings) as hub, serve(build_app(hub)) as url:
        ws = await connect(f"{url}/ws/hist?since=99999999999999999999-0")
        assert await close_code_of(ws) == CloseCode.POLICY_VIOLATION


# -- 4. relayed messages at the size limit ---------------------------------------------------

LIMIT = 4096


class VerbatimRelay(BasePubSubWebSocket):
    async def on_message(self, data: Any) -> None:
        await self.publish(data)


class WrappingRelay(BasePubSubWebSocket):
    async def on_message(self, data: Any) -> None:
        await self.publish({"chat": data, "from": "someone"})


def relay_app(hub: PubSubHub) -> FastAPI:
    app = FastAPI()

    @app.websocket("/verbatim/{channel}")
    async def verbatim(websocket: WebSocket, channel: str) -> None:
        await VerbatimRelay(websocket, channel, hub=hub).run()

    @app.websocket("/wrapping/{channel}")
    async def wrapping(websocket: WebSocket, channel: str) -> None:
        await WrappingRelay(websocket, channel, hub=hub).run()

    return app


def frame_of_exactly(size: int) -> str:
    text = json.dumps({"t": ""})
    return json.dumps({"t": "x" * (size - len(text))})


@pytest.fixture(params=["asgi", "direct"])
async def small_limit_server(
    settings: PubSubSettings, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    """The relays with ``max_message_bytes=LIMIT``, on plain ASGI or on the direct-write
    protocol (where websockets itself stops reading, and inflating, at the limit); the
    clients offer permessage-deflate, as ``websockets`` does by default."""
    options = {"ws": PubSubWebSocketProtocol} if request.param == "direct" else {}
    async with (
        PubSubHub(settings=settings.with_changes(max_message_bytes=LIMIT)) as hub,
        serve(relay_app(hub), **options) as url,
    ):
        yield url


async def test_frame_at_the_size_limit_relayed_verbatim_is_delivered(
    small_limit_server: str,
) -> None:
    ws = await connect(f"{small_limit_server}/verbatim/edge")
    frame = frame_of_exactly(LIMIT)
    assert len(frame.encode()) == LIMIT
    await ws.send(frame)
    assert await recv_until(ws, lambda m: "t" in m) == json.loads(frame)
    await ws.close()


@pytest.mark.parametrize("backend", ["memory"])
async def test_frame_one_byte_over_the_limit_closes_its_sender_1009(
    small_limit_server: str,
) -> None:
    ws = await connect(f"{small_limit_server}/verbatim/edge")
    listener = await connect(f"{small_limit_server}/verbatim/edge")
    await ws.send(frame_of_exactly(LIMIT + 1))
    assert await close_code_of(ws) == CloseCode.MESSAGE_TOO_BIG
    assert f"{LIMIT} bytes" in (ws.close_reason or "")
    # Nothing of it reached the channel; the channel still works.
    await listener.send(frame_of_exactly(LIMIT))
    assert await recv_until(listener, lambda m: "t" in m) == json.loads(frame_of_exactly(LIMIT))
    await listener.close()


async def test_relay_that_grows_a_frame_past_the_limit_closes_its_sender_1009(
    small_limit_server: str,
) -> None:
    ws = await connect(f"{small_limit_server}/wrapping/edge")
    await ws.send(frame_of_exactly(LIMIT))
    assert await close_code_of(ws) == CloseCode.MESSAGE_TOO_BIG
