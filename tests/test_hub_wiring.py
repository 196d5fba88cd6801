"""Sockets find the app's hub however it is wired; a hub they cannot find is an error."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, WebSocket
from websockets.exceptions import InvalidStatus

from fastapi_pubsub_cluster import BasePubSubWebSocket, PubSubHub, current_hub
from tests.conftest import make_settings
from tests.live import connect, recv_until, serve
from tools.processes import uvicorn_process


class Counter(BasePubSubWebSocket):
    async def generate_object_to_send(self) -> Any:
        return {"count": len(self.connection_manager.get(self.channel_id))}


@contextmanager
def server_errors() -> Iterator[list[str]]:
    """What uvicorn logs as errors; enter it once the server runs (uvicorn configures its
    loggers at start, and they do not propagate to pytest's capture)."""
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            error = record.exc_info[1] if record.exc_info else None
            messages.append(f"{record.getMessage()} {error}")

    handler = Keep(logging.ERROR)
    logging.getLogger("uvicorn.error").addHandler(handler)
    try:
        yield messages
    finally:
        logging.getLogger("uvicorn.error").removeHandler(handler)


def ws_url(base: str, path: str) -> str:
    return base.replace("http://", "ws://") + path


async def test_a_hub_not_given_the_apps_lifespan_still_reaches_its_sockets(
    redis_url: str, key_prefix: str
) -> None:
    env = {"UNWIRED_APP_REDIS_URL": redis_url, "PUBSUB_KEY_PREFIX": key_prefix}
    with uvicorn_process("tests.apps.unwired_app:app", env) as base:
        ws = await connect(ws_url(base, "/ws/news"))
        await recv_until(ws, lambda m: m == {"count": 1})
        async with httpx.AsyncClient() as http:
            response = await http.post(f"{base}/publish/news", json={"headline": "hi"})
        assert response.status_code == 200
        await recv_until(ws, lambda m: m == {"headline": "hi"})
        await ws.close()


@pytest.mark.parametrize("with_state", [False, True], ids=["async-with", "lifespan-state"])
async def test_a_hub_entered_in_the_apps_own_lifespan_is_the_sockets_hub(
    with_state: bool, key_prefix: str
) -> None:
    hub = PubSubHub(settings=make_settings(key_prefix))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        async with hub:
            yield {"pubsub_hub": hub} if with_state else None

    app = FastAPI(lifespan=lifespan)

    @app.websocket("/ws/{channel}")
    async def channel_socket(websocket: WebSocket, channel: str) -> None:
        await Counter(websocket, channel).run()

    async with serve(app) as url:
        ws = await connect(f"{url}/ws/room")
        await recv_until(ws, lambda m: m == {"count": 1})
        await hub.publish("room", {"from": "the app's hub"})
        await recv_until(ws, lambda m: m == {"from": "the app's hub"})
        await ws.close()


async def test_current_hub_as_a_dependency_is_the_hub_sockets_use(key_prefix: str) -> None:
    hub = PubSubHub(settings=make_settings(key_prefix))
    app = FastAPI(lifespan=hub.lifespan)

    @app.websocket("/ws/{channel}")
    async def channel_socket(websocket: WebSocket, channel: str) -> None:
        await Counter(websocket, channel).run()

    @app.post("/announce/{channel}")
    async def announce(channel: str, found: Annotated[PubSubHub, Depends(current_hub)]) -> None:
        assert found is hub
        await found.publish(channel, {"announced": True})

    async with serve(app) as url:
        ws = await connect(f"{url}/ws/hall")
        await recv_until(ws, lambda m: m == {"count": 1})
        async with httpx.AsyncClient() as http:
            response = await http.post(f"{url.replace('ws://', 'http://')}/announce/hall")
        assert response.status_code == 200
        await recv_until(ws, lambda m: m == {"announced": True})
        await ws.close()


async def test_two_running_hubs_and_a_socket_that_names_none_is_refused_loudly(
    key_prefix: str,
) -> None:
    app = FastAPI()

    @app.websocket("/ws/{channel}")
    async def channel_socket(websocket: WebSocket, channel: str) -> None:
        await Counter(websocket, channel).run()

    async with (
        PubSubHub(settings=make_settings(key_prefix)),
        PubSubHub(settings=make_settings(key_prefix)),
        serve(app) as url,
    ):
        with server_errors() as errors, pytest.raises(InvalidStatus) as refused:
            await connect(f"{url}/ws/which")
        assert refused.value.response.status_code == 500
    assert any("2 PubSubHub objects exist and this socket names none" in m for m in errors)


async def test_original_style_credentials_naming_another_redis_than_the_apps_hub_are_refused_loudly(
    redis_url: str, key_prefix: str
) -> None:
    hub = PubSubHub(settings=make_settings(key_prefix))  # in memory
    app = FastAPI(lifespan=hub.lifespan)

    @app.websocket("/ws/{channel}")
    async def channel_socket(websocket: WebSocket, channel: str) -> None:
        await Counter(websocket, channel, redis_url).run()

    async with serve(app) as url:
        with server_errors() as errors, pytest.raises(InvalidStatus):
            await connect(f"{url}/ws/elsewhere")
    assert any("name another Redis than the app's PubSubHub" in m for m in errors)
