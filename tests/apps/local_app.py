"""An app around a given hub, for the in-process tests of every backend."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from fastapi import FastAPI, WebSocket

from fastapi_pubsub_cluster import BasePubSubWebSocket, PubSubHub


class CountingSocket(BasePubSubWebSocket):
    """Counts generate calls; echoes client messages to the channel."""

    generate_calls = 0

    async def generate_object_to_send(self) -> Any:
        type(self).generate_calls += 1
        return {"count": len(self.connection_manager.get(self.channel_id))}

    async def on_message(self, data: Any) -> None:
        await self.publish({"echo": data})


class IdentifiedSocket(CountingSocket):
    """Tells its client its connection id; its user and presence name come from the query
    (``?user=``, ``?name=``, or ``?meta=`` as raw JSON); ``{"others": x}`` from the client is
    published to everybody but itself."""

    async def get_user_id(self) -> str | None:
        return self.websocket.query_params.get("user")

    async def presence_metadata(self) -> dict[str, Any] | None:
        raw = self.websocket.query_params.get("meta")
        if raw is not None:
            return dict(json.loads(raw))
        name = self.websocket.query_params.get("name")
        return {"name": name} if name is not None else None

    async def on_connect(self) -> None:
        await self.send_json({"me": self.connection_id})

    async def on_message(self, data: Any) -> None:
        if isinstance(data, dict) and "others" in data:
            await self.publish({"from_other": data["others"]}, exclude_self=True)
        else:
            await super().on_message(data)


class RoomsSocket(IdentifiedSocket):
    """An identified socket in several channels: it joins those listed in ``?also=``
    (comma-separated) when it connects, and its client may join and leave others, except
    those whose name starts with "secret"."""

    client_joins = True

    async def authorize_join(self, channel: str) -> bool:
        return not channel.startswith("secret")

    async def on_connect(self) -> None:
        await super().on_connect()
        for channel in filter(None, self.websocket.query_params.get("also", "").split(",")):
            await self.join(channel)

    async def generate_object_for(self, channel: str) -> Any:
        return {"count": len(self.connection_manager.get(channel)), "of": channel}

    async def on_message(self, data: Any) -> None:
        if isinstance(data, dict) and "to" in data:  # {"to": channel, "say": x}: excludes itself
            await self.hub.publish(data["to"], {"said": data["say"]}, exclude=self.connection_id)
        else:
            await super().on_message(data)


class DenyingSocket(CountingSocket):
    async def authorize(self) -> bool:
        return self.websocket.query_params.get("token") == "secret"


def build_app(hub: PubSubHub, socket_class: type[CountingSocket] = CountingSocket) -> FastAPI:
    app = FastAPI()

    @app.websocket("/ws/{channel}")
    async def channel_socket(websocket: WebSocket, channel: str) -> None:
        await socket_class(websocket, channel, hub=hub).run()

    @app.websocket("/id/{channel}")
    async def identified_socket(websocket: WebSocket, channel: str) -> None:
        await IdentifiedSocket(websocket, channel, hub=hub).run()

    @app.websocket("/rooms/{channel}")
    async def rooms_socket(websocket: WebSocket, channel: str) -> None:
        await RoomsSocket(websocket, channel, hub=hub).run()

    @app.websocket("/guarded/{channel}")
    async def guarded_socket(websocket: WebSocket, channel: str) -> None:
        await DenyingSocket(websocket, channel, hub=hub).run()

    @app.websocket("/cancelled/{channel}")
    async def cancelled_socket(websocket: WebSocket, channel: str) -> None:
        # The route gives the socket a deadline: run() is cancelled while connected.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(socket_class(websocket, channel, hub=hub).run(), 0.5)

    return app
