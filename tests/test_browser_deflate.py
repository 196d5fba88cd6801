"""Real headless Chromium, which offers permessage-deflate on every socket, against the direct
path under each compression policy: what it negotiates, that it decodes every broadcast, and
that its deliveries are written directly (the fast path), not handed to uvicorn's sends."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fastapi_pubsub_cluster import PubSubHub
from fastapi_pubsub_cluster.servers.uvicorn_ws import Compression, PubSubWebSocketProtocol
from fastapi_pubsub_cluster.settings import PubSubSettings
from tests.apps.client_app import build_app
from tests.browser import chromium, requires_chromium
from tests.live import serve, wait_for_condition
from tests.test_compression import LARGE, SMALL

pytestmark = requires_chromium


#: A plain WebSocket in the page (as any browser app opens one); resolves with the
#: extensions the browser negotiated, and keeps every text frame in ``window.received``.
OPEN_SOCKET = """
(url) => new Promise((resolve, reject) => {
  const socket = new WebSocket(url);
  window.received = [];
  window.socket = socket;
  socket.onmessage = (event) => window.received.push(event.data);
  socket.onopen = () => resolve(socket.extensions);
  socket.onerror = () => reject(new Error("the websocket failed"));
})
"""


def payloads(frames: list[str]) -> list[Any]:
    """The published payloads among the frames (a frame is the payload, or wraps it)."""
    found = []
    for frame in map(json.loads, frames):
        data = frame.get("data", frame) if isinstance(frame, dict) else frame
        if isinstance(data, dict) and "kind" in data:
            found.append(data)
    return found


@pytest.mark.parametrize("backend", ["memory"])
@pytest.mark.parametrize(
    ("policy", "negotiated"),
    [
        ("shared", "permessage-deflate; server_no_context_takeover; client_max_window_bits=12"),
        ("per-socket", "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"),
        ("off", ""),
    ],
)
async def test_chromium_decodes_every_broadcast_written_on_the_direct_path(
    settings: PubSubSettings, policy: Compression, negotiated: str
) -> None:
    protocol = PubSubWebSocketProtocol.with_compression(policy)
    async with (
        PubSubHub(settings=settings) as hub,
        serve(build_app(hub), ws=protocol) as url,
        chromium() as browser,
    ):
        page = await browser.new_page()
        await page.goto(url.replace("ws://", "http://") + "/")
        assert await page.evaluate(OPEN_SOCKET, f"{url}/ws/browser") == negotiated
        await wait_for_condition(lambda: len(hub.fanout.local_connections("browser")) == 1, 10)
        (connection,) = hub.fanout.local_connections("browser")
        before = connection.frames_written_directly

        for payload in (SMALL, LARGE, SMALL):
            await hub.publish("browser", payload)
        count = "() => window.received.filter((f) => f.includes('\"kind\"')).length === 3"
        await page.wait_for_function(count, timeout=10_000)
        assert payloads(await page.evaluate("() => window.received")) == [SMALL, LARGE, SMALL]
        assert connection.frames_written_directly - before == 3

        # What the browser compresses reaches the server whole (echoed to the channel).
        said = {"kind": "said", "text": "x" * 5000}
        await page.evaluate("(text) => window.socket.send(text)", json.dumps(said))
        echo = "() => window.received.some((f) => f.includes('\"echo\"'))"
        await page.wait_for_function(echo, timeout=10_000)
        frames = [json.loads(f) for f in await page.evaluate("() => window.received")]
        assert any(f.get("echo", f.get("data", {}).get("echo")) == said for f in frames), frames
