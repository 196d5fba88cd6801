"""Ceiling: a bare FastAPI endpoint that loops ``send_text`` over a set of sockets."""

from __future__ import annotations

import contextlib

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from benchmarks.apps import CONTROL_PATH, split_control_frame

app = FastAPI()
channels: dict[str, set[WebSocket]] = {}


@app.websocket("/ws/{channel}")
async def channel_socket(websocket: WebSocket, channel: str) -> None:
    await websocket.accept()
    members = channels.setdefault(channel, set())
    members.add(websocket)
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass
    finally:
        members.discard(websocket)


@app.websocket(CONTROL_PATH)
async def control(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            channel, payload = split_control_frame(await websocket.receive_text())
            for member in list(channels.get(channel, ())):
                with contextlib.suppress(Exception):  # a client gone mid-send
                    await member.send_text(payload)
    except WebSocketDisconnect:
        pass


@app.get("/healthz")
async def healthz() -> dict[str, int]:
    return {"local_connections": sum(len(members) for members in channels.values())}
