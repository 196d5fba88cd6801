"""The demo app: one page, one websocket route, a hub configured from ``PUBSUB_*``."""

from __future__ import annotations

import asyncio
import html
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse
from redis.exceptions import RedisError

from ..backends.redis.clients import RedisEndpoint
from ..client_script import client_script_route
from ..edge.websocket import BasePubSubWebSocket
from ..http_errors import add_exception_handlers
from ..hub import PubSubHub
from ..settings import PubSubSettings

#: Environment variable naming the channel the page joins unless its URL names another.
DEMO_CHANNEL_ENV = "PUBSUB_DEMO_CHANNEL"
DEFAULT_CHANNEL = "lobby"
#: Longest chat text and name relayed; longer ones are cut.
MAX_CHAT_TEXT = 500
MAX_NAME = 40

_CHANNEL_PLACEHOLDER = "{{DEFAULT_CHANNEL}}"
_BACKEND_PLACEHOLDER = "{{BACKEND}}"


class DemoSocket(BasePubSubWebSocket):
    """A demo client: told the channel's count on every join and leave, relays chat lines;
    its page (``pubsub.js``) may join a second room; its ``?name=`` is its presence."""

    client_joins = True

    async def presence_metadata(self) -> dict[str, Any] | None:
        name = self.websocket.query_params.get("name", "").strip()
        return {"name": name[:MAX_NAME]} if name else None

    async def generate_object_to_send(self) -> dict[str, Any]:
        return {
            "type": "presence",
            "channel": self.channel_id,
            "count": len(self.connection_manager.get(self.channel_id)),
            "worker": os.getpid(),
        }

    async def on_message(self, data: Any) -> None:
        chat = chat_line_from(data)
        if chat is not None:
            await self.publish({**chat, "worker": os.getpid()})


def chat_line_from(data: Any) -> dict[str, str] | None:
    """The chat line in a client message ``{"type": "chat", "name": ..., "text": ...}``.

    Anything else (other types, empty text) gives ``None`` and is ignored.
    """
    if not isinstance(data, dict) or data.get("type") != "chat":
        return None
    text = data.get("text")
    if not isinstance(text, str) or not text.strip():
        return None
    name = data.get("name")
    name = name.strip()[:MAX_NAME] if isinstance(name, str) and name.strip() else "anonymous"
    return {"type": "chat", "name": name, "text": text.strip()[:MAX_CHAT_TEXT]}


def render_page(default_channel: str, backend: str) -> str:
    """The demo page with its default channel and backend name filled in."""
    template = resources.files(__package__).joinpath("static", "index.html").read_text("utf-8")
    return template.replace(_CHANNEL_PLACEHOLDER, html.escape(default_channel)).replace(
        _BACKEND_PLACEHOLDER, html.escape(backend)
    )


def create_app(
    settings: PubSubSettings | None = None, default_channel: str | None = None
) -> FastAPI:
    """Build the demo app.

    Settings default to the ``PUBSUB_*`` environment, the channel to ``PUBSUB_DEMO_CHANNEL``.
    The page is served by the app itself, so the default ``allowed_origins`` (same origin
    only) admits it; ``PUBSUB_ALLOWED_ORIGINS`` admits pages served elsewhere.
    """
    hub = PubSubHub(settings=settings)
    channel = default_channel or os.environ.get(DEMO_CHANNEL_ENV) or DEFAULT_CHANNEL
    hub.settings.validate_channel_id(channel)
    backend = "redis" if hub.settings.redis_url else "in-memory"
    page = render_page(channel, backend)
    # /healthz asks Redis itself (one small client of its own), so that a worker whose Redis
    # is gone reports 503 and the orchestrator can tell.
    endpoint = (
        RedisEndpoint(hub.settings.redis_url, hub.settings, client_name="demo-healthz")
        if hub.settings.redis_url
        else None
    )
    probe = endpoint.command_client(max_connections=1) if endpoint is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with hub.lifespan(app):
            try:
                yield
            finally:
                if endpoint is not None:
                    await endpoint.aclose()

    app = FastAPI(title="fastapi-pubsub-cluster demo", lifespan=lifespan)
    add_exception_handlers(app)
    app.include_router(client_script_route())  # the page's client, at /pubsub.js

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        body: dict[str, Any] = {
            "pid": os.getpid(),
            "backend": backend,
            "local_connections": hub.fanout.local_connection_count,
        }
        if probe is not None:
            try:
                async with asyncio.timeout(hub.settings.redis_timeout):
                    await probe.ping()
            except (RedisError, OSError, TimeoutError) as exc:
                body["redis"] = f"unreachable: {type(exc).__name__}"
                return JSONResponse(body, status_code=503)
            body["redis"] = "ok"
        return JSONResponse(body)

    @app.websocket("/ws/{channel}")
    async def channel_socket(websocket: WebSocket, channel: str) -> None:
        await DemoSocket(websocket, channel, hub=hub).run()

    return app
