"""Peer: permitio's fastapi_websocket_pubsub, its ``PubSubEndpoint`` with a Redis broadcaster.

Clients speak its JSON-RPC protocol (subscribe, then answer every ``notify`` call). Its users
publish from inside the app with ``endpoint.publish()``, so the driver publishes through the
control websocket.

``endpoint.register_route()`` routes sockets to the RPC endpoint's own main loop, which never
enters the broadcaster's listening context: events shared through Redis by another process
then reach nobody here (with 2 workers, only the clients of the worker that published
received anything). With several workers (BENCH_PERMIT_LISTEN=1) the route awaits
``PubSubEndpoint.main_loop``, which listens to the broadcaster while any socket is open.
"""

from __future__ import annotations

import json

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from fastapi_websocket_pubsub import PubSubEndpoint
from fastapi_websocket_pubsub.event_broadcaster import EventBroadcaster
from fastapi_websocket_pubsub.websocket_rpc_event_notifier import WebSocketRpcEventNotifier

from benchmarks.apps import CONTROL_PATH, split_control_frame
from benchmarks.apps.peer_settings import PERMIT_LISTEN, PREFIX, REDIS_URL

notifier = WebSocketRpcEventNotifier()
endpoint = PubSubEndpoint(
    notifier=notifier,
    broadcaster=EventBroadcaster(REDIS_URL, notifier, channel=f"{PREFIX}-permit"),
)
app = FastAPI()
if PERMIT_LISTEN:

    @app.websocket("/pubsub")
    async def pubsub(websocket: WebSocket) -> None:
        await endpoint.main_loop(websocket)

else:
    endpoint.register_route(app, "/pubsub")


@app.websocket(CONTROL_PATH)
async def control(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            channel, payload = split_control_frame(await websocket.receive_text())
            await endpoint.publish([channel], json.loads(payload))
    except WebSocketDisconnect:
        pass


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
