"""The app of the server-sent event tests: a hub in the lifespan, streams and publishing."""

from __future__ import annotations

import os
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse
from sse_starlette import EventSourceResponse

from fastapi_pubsub_cluster import EventStream, PubSubHub

hub = PubSubHub()  # configured by PUBSUB_* environment variables
app = FastAPI(lifespan=hub.lifespan)


class GuardedStream(EventStream):
    """Streams for a request with ``?token=let-me-in``; never the channel ``secret``."""

    async def authorize(self) -> bool:
        return self.request.query_params.get("token") == "let-me-in"

    async def authorize_join(self, channel: str) -> bool:
        return channel != "secret"


@app.get("/events")
async def events(request: Request, channel: Annotated[list[str], Query()]) -> EventSourceResponse:
    return await GuardedStream(request, channel, ping=1.0, retry=200).response()


@app.post("/publish/{channel}")
async def publish(channel: str, body: dict[str, Any]) -> dict[str, int]:
    await hub.publish(channel, body)
    return {"pid": os.getpid()}


@app.get("/")
async def page() -> HTMLResponse:
    return HTMLResponse("<!doctype html><title>sse</title>")


@app.get("/healthz")
async def healthz() -> dict[str, Any]:
    return {"ok": True, "pid": os.getpid()}
