"""The app the multi-process tests run: a hub in the lifespan, counting sockets, publishing."""

from __future__ import annotations

import os
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


@app.websocket("/ws/{channel}")
async def channel_socket(websocket: WebSocket, channel: str) -> None:
    await CountingSocket(websocket, channel).run()


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


@app.get("/presence/{channel}")
async def presence(channel: str) -> dict[str, list[str]]:
    """This worker's own connections in ``channel`` and its mirror of the whole cluster's."""
    return {
        "local": sorted(hub.fanout.local_members(channel)),
        "mirror": sorted(hub.get(channel)),
    }
