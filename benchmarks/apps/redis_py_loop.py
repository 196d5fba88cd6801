"""Floor for the Redis path: what one would write by hand with redis-py and FastAPI.

Each worker holds one pub/sub connection (SUBSCRIBE on a channel's first local socket) and
loops ``send_text`` over the channel's local sockets for every message; the payload on
Redis is the JSON text itself. The driver publishes with a plain ``PUBLISH``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from benchmarks.apps.peer_settings import REDIS_URL, raw_topic

channels: dict[str, set[WebSocket]] = {}
client = aioredis.Redis.from_url(REDIS_URL)
pubsub = client.pubsub(ignore_subscribe_messages=True)
subscribe_lock = asyncio.Lock()


async def listen() -> None:
    while True:
        if not pubsub.subscribed:
            await asyncio.sleep(0.05)
            continue
        async for message in pubsub.listen():
            if message["type"] != "message":
                continue
            channel = message["channel"].decode().partition(":")[2]
            text = message["data"].decode()
            for member in list(channels.get(channel, ())):
                with contextlib.suppress(Exception):  # a client gone mid-send
                    await member.send_text(text)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    listener = asyncio.create_task(listen())
    try:
        yield
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


app = FastAPI(lifespan=lifespan)


@app.websocket("/ws/{channel}")
async def channel_socket(websocket: WebSocket, channel: str) -> None:
    await websocket.accept()
    async with subscribe_lock:
        members = channels.setdefault(channel, set())
        if not members:
            await pubsub.subscribe(raw_topic(channel))
        members.add(websocket)
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass
    finally:
        members.discard(websocket)


@app.get("/healthz")
async def healthz() -> dict[str, int]:
    return {"local_connections": sum(len(members) for members in channels.values())}
