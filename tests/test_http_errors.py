"""HTTP callers get 4xx for bad input and 503 when Redis is down, never a 500 traceback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from examples.chat import app as chat_app
from fastapi_pubsub_cluster import (
    MalformedMessageError,
    MessageTooLargeError,
    PublishError,
    PubSubError,
)
from fastapi_pubsub_cluster.http_errors import add_exception_handlers
from tests.live import serve
from tools.processes import uvicorn_process
from tools.redis_servers import OwnedRedisServer


@pytest.fixture
async def chat_base() -> AsyncIterator[str]:
    async with serve(chat_app) as url:  # in memory: PUBSUB_REDIS_URL is not set in tests
        yield url.replace("ws://", "http://")


async def test_announce_to_an_invalid_room_answers_422_with_a_detail(chat_base: str) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{chat_base}/rooms/bad%20room/announce", json={"text": "hi"})
    assert response.status_code == 422
    assert "channel id" in response.json()["detail"]


def test_announce_while_redis_is_down_answers_503(owned_redis: OwnedRedisServer) -> None:
    env = {"PUBSUB_REDIS_URL": owned_redis.url, "PUBSUB_REDIS_TIMEOUT": "0.5"}
    with uvicorn_process("examples.chat:app", env) as base:
        assert httpx.post(f"{base}/rooms/lobby/announce", json={"text": "hi"}).status_code == 200
        owned_redis.stop()
        response = httpx.post(f"{base}/rooms/lobby/announce", json={"text": "hi"}, timeout=10)
        assert response.status_code == 503
        assert "Redis" in response.json()["detail"]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (MalformedMessageError("payload holds NaN"), 422),
        (MessageTooLargeError("message is 2000000 bytes"), 422),
        (PublishError("cannot publish, Redis unavailable"), 503),
    ],
)
async def test_library_errors_map_to_http_statuses(error: PubSubError, status: int) -> None:
    app = FastAPI()
    add_exception_handlers(app)

    @app.get("/fail")
    async def fail() -> None:
        raise error

    async with serve(app) as url, httpx.AsyncClient() as http:
        response = await http.get(f"{url.replace('ws://', 'http://')}/fail")
    assert response.status_code == status
    assert response.json() == {"detail": str(error)}
