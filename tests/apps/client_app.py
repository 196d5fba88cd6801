"""An app for the browser client's tests: serves ``pubsub.js`` and a blank page that imports
it, and sockets whose clients may join further channels (not those named ``secret-*``), or, at
``/own/<channel>``, stay in their own channel.

``build_app(hub)`` for in-process tests; ``tests.apps.client_server:app`` for server
processes (a module of its own: a hub made at import would be the one that apps naming none
find in the test process, see ``edge.hubs.hub_for``).
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI, WebSocket
from fastapi.responses import HTMLResponse

from fastapi_pubsub_cluster import BasePubSubWebSocket, PubSubHub, client_script_route

#: The page the tests drive: ``window.PubSubClient`` once the module has loaded.
PAGE = """<!doctype html>
<meta charset="utf-8">
<title>pubsub.js test page</title>
<script type="module">
import * as pubsub from "/pubsub.js";
window.pubsub = pubsub;
</script>
"""


class ClientSocket(BasePubSubWebSocket):
    """Tells its client the pid of its worker; closes with the code a client message
    ``{"close_with": code}`` asks for; echoes other client messages to its channel."""

    client_joins = True

    async def authorize_join(self, channel: str) -> bool:
        return not channel.startswith("secret-")

    async def on_connect(self) -> None:
        await self.send_json({"pid": os.getpid()})

    async def on_message(self, data: Any) -> None:
        if isinstance(data, dict) and isinstance(data.get("close_with"), int):
            await self.close(data["close_with"], "asked by the client")
        else:
            await self.publish({"echo": data})


class OwnChannelSocket(BasePubSubWebSocket):
    """A socket in its own channel only: its class sets no ``client_joins``."""

    async def on_message(self, data: Any) -> None:
        await self.publish({"echo": data})


def build_app(hub: PubSubHub) -> FastAPI:
    app = FastAPI(lifespan=hub.lifespan)
    app.include_router(client_script_route())

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE

    @app.get("/healthz")
    async def healthz() -> dict[str, int]:
        return {"pid": os.getpid()}

    @app.websocket("/ws/{channel}")
    async def channel_socket(websocket: WebSocket, channel: str) -> None:
        await ClientSocket(websocket, channel, hub=hub).run()

    @app.websocket("/own/{channel}")
    async def own_channel_socket(websocket: WebSocket, channel: str) -> None:
        await OwnChannelSocket(websocket, channel, hub=hub).run()

    return app
