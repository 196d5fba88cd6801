"""Peer: python-socketio with ``AsyncRedisManager``, rooms as channels (its documented way).

Clients join the room named by the ``channel`` query parameter on connect; the driver emits
to the room from outside with a write-only ``AsyncRedisManager``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import socketio
from fastapi import FastAPI

from benchmarks.apps import NO_KEEPALIVE_SECONDS
from benchmarks.apps.peer_settings import REDIS_URL, socketio_channel

manager = socketio.AsyncRedisManager(REDIS_URL, channel=socketio_channel())
# No engine.io pings while measuring, as every measured server (servers.KEEPALIVE_NOTE).
sio = socketio.AsyncServer(
    async_mode="asgi", client_manager=manager, ping_interval=NO_KEEPALIVE_SECONDS
)
http = FastAPI()


@sio.event
async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    await sio.enter_room(sid, query.get("channel", ["default"])[0])


@http.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


app = socketio.ASGIApp(sio, other_asgi_app=http)
