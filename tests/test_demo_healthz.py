"""The demo's /healthz asks Redis: 200 while it answers, 503 when it is gone."""

from __future__ import annotations

import httpx

from fastapi_pubsub_cluster.demo import create_app
from tests.conftest import make_settings


async def get_healthz(app: object) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        return await client.get("/healthz")


async def test_healthz_is_ok_while_redis_answers_and_503_once_it_is_gone(
    owned_redis: object, key_prefix: str
) -> None:
    url = owned_redis.url  # type: ignore[attr-defined]
    app = create_app(make_settings(key_prefix, url, redis_timeout=0.5))
    async with app.router.lifespan_context(app):
        healthy = await get_healthz(app)
        assert healthy.status_code == 200
        assert healthy.json()["redis"] == "ok"
        owned_redis.stop()  # type: ignore[attr-defined]
        broken = await get_healthz(app)
        assert broken.status_code == 503
        assert broken.json()["redis"].startswith("unreachable")


async def test_healthz_in_memory_has_no_redis_to_ask(key_prefix: str) -> None:
    app = create_app(make_settings(key_prefix))
    async with app.router.lifespan_context(app):
        response = await get_healthz(app)
    assert response.status_code == 200
    assert "redis" not in response.json()
