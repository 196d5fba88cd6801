"""Sends to a client that is closing or gone: a quiet no-op, not an error; real errors
still reach the code that sends."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket

from fastapi_pubsub_cluster import BasePubSubWebSocket, PubSubHub
from fastapi_pubsub_cluster.errors import MalformedMessageError
from tests.conftest import make_settings
from tests.live import connect, recv_json, serve, wait_for_condition


class Replies:
    """What the test and the server's on_message tell each other."""

    def __init__(self) -> None:
        self.client_gone = asyncio.Event()
        self.done = asyncio.Event()


def _app(hub: PubSubHub, replies: Replies) -> FastAPI:
    class ReplyingSocket(BasePubSubWebSocket):
        async def on_message(self, data: Any) -> None:
            if data == "nan":  # a payload no client can receive: the sender hears of it
                try:
                    await self.send_json({"x": float("nan")})
                except MalformedMessageError as exc:
                    await self.send_json({"error": type(exc).__name__})
                return
            # Replies once the client has closed its side (as a slow handler's would).
            await asyncio.wait_for(replies.client_gone.wait(), 5)
            for i in range(3):
                await self.send_json({"reply": i})
            await self.send_message("bye")
            replies.done.set()

    app = FastAPI()

    @app.websocket("/reply/{channel}")
    async def reply_socket(websocket: WebSocket, channel: str) -> None:
        await ReplyingSocket(websocket, channel, hub=hub).run()

    return app


@pytest.fixture
async def memory_hub(key_prefix: str) -> AsyncIterator[PubSubHub]:
    async with PubSubHub(settings=make_settings(key_prefix)) as hub:
        yield hub


async def test_replies_to_a_client_that_closed_are_dropped_quietly(
    memory_hub: PubSubHub, caplog: pytest.LogCaptureFixture
) -> None:
    replies = Replies()
    caplog.set_level(logging.DEBUG, logger="fastapi_pubsub_cluster")
    async with serve(_app(memory_hub, replies)) as url:
        ws = await connect(f"{url}/reply/closing")
        await ws.send('"hello"')
        await ws.close()
        replies.client_gone.set()
        await asyncio.wait_for(replies.done.wait(), 5)  # on_message ran to its end
        await wait_for_condition(lambda: memory_hub.fanout.local_connection_count == 0, 5)
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert loud == []


async def test_a_payload_no_client_can_receive_still_raises_to_the_sender(
    memory_hub: PubSubHub,
) -> None:
    async with serve(_app(memory_hub, Replies())) as url:
        ws = await connect(f"{url}/reply/strict")
        await ws.send('"nan"')
        assert await recv_json(ws) == {"error": "MalformedMessageError"}
        await ws.close()
