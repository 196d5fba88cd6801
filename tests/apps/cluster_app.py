"""The app the multi-process tests run: a hub in the lifespan, counting sockets, publishing."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from fastapi import FastAPI, HTTPException, WebSocket

from fastapi_pubsub_cluster import BasePubSubWebSocket, PublishError, PubSubHub

hub = PubSubHub()  # configured by PUBSUB_* environment variables
app = FastAPI(lifespan=hub.lifespan)


class CountingSocket(BasePubSubWebSocket):
    """Sends the cluster-wide count after every join and leave; republishes client messages."""

    async def generate_object_to_send(self) -> Any:
        return {"count": len(self.connection_manager.get(self.channel_id))}

    async def on_message(self, data: Any) -> None:
        await self.publish({"echo": data, "via": os.getpid()})


class IdentifiedSocket(CountingSocket):
    """Tells its client its connection id; user and presence name from ``?user=``/``?name=``."""

    async def get_user_id(self) -> str | None:
        return self.websocket.query_params.get("user")

    async def presence_metadata(self) -> dict[str, Any] | None:
        name = self.websocket.query_params.get("name")
        return {"name": name} if name is not None else None

    async def on_connect(self) -> None:
        await self.send_json({"me": self.connection_id, "pid": os.getpid()})


class RoomsSocket(IdentifiedSocket):
    """An identified socket whose client may join and leave further channels."""

    client_joins = True

    async def generate_object_for(self, channel: str) -> Any:
        return {"count": len(self.connection_manager.get(channel)), "of": channel}


class StallingSocket(CountingSocket):
    """A counting socket whose ``on_connect`` hook blocks the worker's event loop for
    ``?stall=`` seconds (a slow hook: a synchronous call where an await belonged)."""

    async def on_connect(self) -> None:
        time.sleep(float(self.websocket.query_params.get("stall", "0")))  # noqa: ASYNC251


@app.websocket("/ws/{channel}")
async def channel_socket(websocket: WebSocket, channel: str) -> None:
    await CountingSocket(websocket, channel).run()


@app.websocket("/stall/{channel}")
async def stalling_socket(websocket: WebSocket, channel: str) -> None:
    await StallingSocket(websocket, channel).run()


@app.websocket("/id/{channel}")
async def identified_socket(websocket: WebSocket, channel: str) -> None:
    await IdentifiedSocket(websocket, channel).run()


@app.websocket("/rooms/{channel}")
async def rooms_socket(websocket: WebSocket, channel: str) -> None:
    await RoomsSocket(websocket, channel).run()


@app.post("/send/{connection_id}")
async def send_to(connection_id: str, body: dict[str, Any]) -> dict[str, int]:
    return {"sent": await hub.send_to(connection_id, body), "pid": os.getpid()}


@app.post("/send_user/{user_id}")
async def send_to_user(user_id: str, body: dict[str, Any]) -> dict[str, int]:
    return {"sent": await hub.send_to_user(user_id, body), "pid": os.getpid()}


@app.get("/presence/{channel}")
async def presence(channel: str) -> dict[str, Any]:
    return {"presence": await hub.presence(channel), "pid": os.getpid()}


@app.post("/subscribe/{channel}")
async def subscribe_and_wait(channel: str, body: dict[str, Any]) -> dict[str, Any]:
    """Subscribe server-side, say so on the channel, and return the first message published
    after that (within ``body["timeout"]`` seconds)."""
    async with asyncio.timeout(float(body.get("timeout", 10))):
        async with hub.subscribe(channel) as messages:
            await hub.publish(channel, {"subscribed": os.getpid()})
            async for message in messages:
                if "subscribed" not in message:
                    return {"message": message, "pid": os.getpid()}
    return {"message": None, "pid": os.getpid()}


@app.post("/publish/{channel}")
async def publish(channel: str, body: dict[str, Any]) -> dict[str, int]:
    try:
        await hub.publish(channel, body)
    except PublishError as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from exc
    return {"pid": os.getpid()}


@app.get("/healthz")
async def healthz() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "worker": hub.fanout.worker_id,
        "local_connections": hub.fanout.local_connection_count,
    }


@app.get("/mirror/{channel}")
async def mirror(channel: str) -> dict[str, list[str]]:
    """This worker's own connections in ``channel`` and its mirror of the whole cluster's."""
    return {
        "local": sorted(c.id for c in hub.fanout.local_connections(channel)),
        "mirror": sorted(hub.get(channel)),
    }
