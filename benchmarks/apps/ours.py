"""fastapi-pubsub-cluster as its users run it; configured by ``PUBSUB_*`` variables."""

from __future__ import annotations

import json

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from benchmarks.apps import CONTROL_PATH, split_control_frame
from fastapi_pubsub_cluster import BasePubSubWebSocket, PubSubHub

hub = PubSubHub()  # PUBSUB_REDIS_URL set: Redis manager; unset: in memory
app = FastAPI(lifespan=hub.lifespan)


@app.websocket("/ws/{channel}")
async def channel_socket(websocket: WebSocket, channel: str) -> None:
    await BasePubSubWebSocket(websocket, channel).run()


class CountingSocket(BasePubSubWebSocket):
    """The README's original example: after each join and leave, every client of the
    channel receives its cluster-wide number of clients."""

    async def generate_object_to_send(self) -> dict[str, int]:
        return {"num_connected_clients": len(self.connection_manager.get(self.websocket_id))}


@app.websocket("/count/{channel}")
async def counting_socket(websocket: WebSocket, channel: str) -> None:
    await CountingSocket(websocket, channel).run()


class RoomsSocket(BasePubSubWebSocket):
    """A socket that also joins the channels listed in ``?also=`` (comma-separated)."""

    async def on_connect(self) -> None:
        for channel in filter(None, self.websocket.query_params.get("also", "").split(",")):
            await self.join(channel)


@app.websocket("/rooms/{channel}")
async def rooms_socket(websocket: WebSocket, channel: str) -> None:
    await RoomsSocket(websocket, channel).run()


@app.websocket(CONTROL_PATH)
async def control(websocket: WebSocket) -> None:
    """Publications from the driver, for the in-memory manager (no Redis to publish into)."""
    await websocket.accept()
    try:
        while True:
            channel, payload = split_control_frame(await websocket.receive_text())
            await hub.publish(channel, json.loads(payload))
    except WebSocketDisconnect:
        pass


@app.get("/healthz")
async def healthz() -> dict[str, int]:
    return {"local_connections": hub.fanout.local_connection_count}
