"""Peer: encode/broadcaster with its Redis backend, one ``subscribe()`` per socket.

The pattern of broadcaster's README: a receiving task and a sending task per socket, the
sender iterating over the socket's own subscription. The driver publishes with
``Broadcast(url).publish()`` from outside.

Two workarounds, without which no socket receives anything:

1. (BENCH_BROADCASTER_LOCK=1, the default) ``Broadcast.subscribe()`` checks "is anyone
   subscribed?", awaits the Redis SUBSCRIBE, then assigns the channel's subscriber set, so
   sockets that join a channel concurrently overwrite each other and all but one never
   receive. Entering ``subscribe()`` under one lock serialises those first subscribers.
2. The Redis backend sets its ``_ready`` event *before* awaiting SUBSCRIBE; its listener
   wakes during that await, finds nothing subscribed yet, so ``PubSub.listen()`` returns at
   once, and the listener clears ``_ready`` and sleeps for good. Setting ``_ready`` again
   once the subscription is in place wakes it with the channel subscribed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from broadcaster import Broadcast
from broadcaster._base import Subscriber
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from benchmarks.apps.peer_settings import BROADCASTER_LOCK, REDIS_URL, broadcaster_channel

broadcast = Broadcast(REDIS_URL)
subscribe_lock = asyncio.Lock()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await broadcast.connect()
    try:
        yield
    finally:
        await broadcast.disconnect()


app = FastAPI(lifespan=lifespan)


def rearm_listener() -> None:
    """Workaround 2: wake the Redis backend's listener now that a channel is subscribed."""
    ready = getattr(broadcast._backend, "_ready", None)
    if isinstance(ready, asyncio.Event):
        ready.set()


async def receive_until_disconnect(websocket: WebSocket) -> None:
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass


async def forward(websocket: WebSocket, subscriber: Subscriber) -> None:
    async for event in subscriber:  # type: ignore[union-attr]
        if event is not None:
            await websocket.send_text(event.message)


@app.websocket("/ws/{channel}")
async def channel_socket(websocket: WebSocket, channel: str) -> None:
    await websocket.accept()
    async with AsyncExitStack() as stack:
        subscription = broadcast.subscribe(broadcaster_channel(channel))
        if BROADCASTER_LOCK:
            async with subscribe_lock:
                subscriber = await stack.enter_async_context(subscription)
        else:
            subscriber = await stack.enter_async_context(subscription)
        rearm_listener()
        receiver = asyncio.create_task(receive_until_disconnect(websocket))
        sender = asyncio.create_task(forward(websocket, subscriber))
        try:
            await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (receiver, sender):
                task.cancel()
            await asyncio.gather(receiver, sender, return_exceptions=True)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
