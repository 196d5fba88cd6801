"""Origin checks against cross-site WebSocket hijacking, over real sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import websockets

from fastapi_pubsub_cluster import PubSubHub, PubSubSettings
from fastapi_pubsub_cluster.edge.origins import origin_allowed
from tests.apps.local_app import build_app
from tests.conftest import make_settings
from tests.live import connect, recv_until, serve


@pytest.fixture
async def same_origin_only(key_prefix: str) -> AsyncIterator[tuple[PubSubHub, str]]:
    async with PubSubHub(settings=make_settings(key_prefix)) as hub, serve(build_app(hub)) as url:
        yield hub, url


async def test_cross_site_origin_is_refused_with_403_and_registers_nothing(
    same_origin_only: tuple[PubSubHub, str],
) -> None:
    hub, url = same_origin_only
    with pytest.raises(websockets.InvalidStatus) as refused:
        await connect(f"{url}/ws/hijack", origin="https://evil.example")
    assert refused.value.response.status_code == 403
    assert await hub.count("hijack") == 0


async def test_same_origin_socket_is_accepted(same_origin_only: tuple[PubSubHub, str]) -> None:
    _, url = same_origin_only
    page = url.replace("ws://", "http://")
    ws = await connect(f"{url}/ws/home", origin=page)
    assert await recv_until(ws, lambda m: "count" in m) == {"count": 1}
    await ws.close()


async def test_socket_without_origin_header_is_accepted(
    same_origin_only: tuple[PubSubHub, str],
) -> None:
    _, url = same_origin_only
    ws = await connect(f"{url}/ws/script")  # non-browser clients send no Origin
    assert await recv_until(ws, lambda m: "count" in m) == {"count": 1}
    await ws.close()


async def test_allowed_origin_pattern_admits_a_subdomain_and_refuses_others(
    key_prefix: str,
) -> None:
    settings = make_settings(key_prefix, allowed_origins=("https://*.example.com",))
    async with PubSubHub(settings=settings) as hub, serve(build_app(hub)) as url:
        ws = await connect(f"{url}/ws/sub", origin="https://app.example.com")
        assert await recv_until(ws, lambda m: "count" in m) == {"count": 1}
        with pytest.raises(websockets.InvalidStatus):
            await connect(f"{url}/ws/sub", origin="https://example.com.evil.example")
        await ws.close()


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "expected"),
    [
        (None, "app.example.com", (), True),
        ("https://app.example.com", "app.example.com", (), True),
        ("http://127.0.0.1:8000", "127.0.0.1:8000", (), True),
        ("https://app.example.com:443", "app.example.com", (), True),
        ("https://evil.example", "app.example.com", (), False),
        ("http://127.0.0.1:9000", "127.0.0.1:8000", (), False),
        ("null", "app.example.com", (), False),
        ("https://evil.example", None, (), False),
        ("https://app.example.com", "ws.internal", ("https://app.example.com",), True),
        ("https://APP.example.com/", "ws.internal", ("https://app.example.com",), True),
        ("http://app.example.com", "ws.internal", ("https://app.example.com",), False),
        ("https://a.b.example.com", "ws.internal", ("https://*.example.com",), True),
        ("https://example.com", "ws.internal", ("https://*.example.com",), False),
        ("https://evilexample.com", "ws.internal", ("https://*.example.com",), False),
        ("https://x.example.com.evil.io", "ws.internal", ("https://*.example.com",), False),
        ("https://anything.io", "ws.internal", ("*",), True),
        ("http://localhost:5173", "ws.internal", ("http://localhost:*",), True),
    ],
)
def test_origin_allowed(
    origin: str | None, host: str | None, allowed: tuple[str, ...], expected: bool
) -> None:
    assert origin_allowed(origin, host, allowed) is expected


def test_allowed_origins_come_comma_separated_from_the_environment() -> None:
    settings = PubSubSettings.from_env(
        {"PUBSUB_ALLOWED_ORIGINS": "https://app.example.com, https://*.example.org"}
    )
    assert settings.allowed_origins == ("https://app.example.com", "https://*.example.org")
