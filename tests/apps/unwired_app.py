"""An app as a new user might write it: a hub for publishing, but not given to the app's
lifespan, and sockets that name no hub."""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI, WebSocket

from fastapi_pubsub_cluster import BasePubSubWebSocket, PubSubHub

# The URL given in code, as README shows it (not through PUBSUB_REDIS_URL).
hub = PubSubHub(os.environ["UNWIRED_APP_REDIS_URL"])
app = FastAPI()  # no lifespan=hub.lifespan


class Counter(BasePubSubWebSocket):
    async def generate_object_to_send(self) -> Any:
        return {"count": len(self.connection_manager.get(self.channel_id))}


@app.websocket("/ws/{channel}")
async def channel_socket(websocket: WebSocket, channel: str) -> None:
    await Counter(websocket, channel).run()


@app.post("/publish/{channel}")
async def publish(channel: str, body: dict[str, Any]) -> dict[str, int]:
    await hub.publish(channel, body)
    return {"pid": os.getpid()}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
