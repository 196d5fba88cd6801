"""A small chat: rooms, who is online, and an HTTP endpoint that announces to a room.

Run it:    uvicorn examples.chat:app
A cluster: PUBSUB_REDIS_URL=redis://localhost:6379/0 uvicorn examples.chat:app --workers 4

Clients connect to ``/ws/{room}?name=alice`` and send ``{"text": "..."}``; every client of the
room receives ``{"from": "alice", "text": "..."}``, and ``{"online": N}`` whenever someone
joins or leaves. ``POST /rooms/{room}/announce`` with ``{"text": "..."}`` reaches them too
(422 for an invalid room name, 503 while Redis is unavailable).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, WebSocket
from pydantic import BaseModel, Field

from fastapi_pubsub_cluster import BasePubSubWebSocket, PubSubHub
from fastapi_pubsub_cluster.http_errors import add_exception_handlers

hub = PubSubHub()  # PUBSUB_REDIS_URL and the other PUBSUB_* variables configure it
app = FastAPI(lifespan=hub.lifespan)
add_exception_handlers(app)  # bad room: 422; Redis down: 503


class ChatMember(BasePubSubWebSocket):
    """One person in a room."""

    @property
    def name(self) -> str:
        return self.websocket.query_params.get("name", "anonymous")[:40]

    async def generate_object_to_send(self) -> dict[str, int]:
        return {"online": len(self.connection_manager.get(self.channel_id))}

    async def on_message(self, data: Any) -> None:
        if isinstance(data, dict) and isinstance(data.get("text"), str) and data["text"].strip():
            await self.publish({"from": self.name, "text": data["text"].strip()[:1000]})


class Announcement(BaseModel):
    text: str = Field(min_length=1, max_length=1000)


@app.websocket("/ws/{room}")
async def room_socket(websocket: WebSocket, room: str) -> None:
    await ChatMember(websocket, room).run()


@app.post("/rooms/{room}/announce")
async def announce(room: str, announcement: Announcement) -> dict[str, int]:
    await hub.publish(room, {"from": "announcer", "text": announcement.text})
    return {"online": await hub.count(room)}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
