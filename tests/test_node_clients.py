"""Real Node ``ws`` clients on the direct path: Node's own permessage-deflate offers (its
default, no context takeover, a small server window) and an uncompressed client, in one
channel, under each compression policy.

The clients live in ``tests/node`` (``npm ci`` there installs ``ws`` from its lock file;
CI does it, and this module does it when ``node_modules`` is missing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from fastapi_pubsub_cluster import PubSubHub
from fastapi_pubsub_cluster.servers.uvicorn_ws import Compression, PubSubWebSocketProtocol
from tests.apps.local_app import build_app
from tests.live import serve
from tests.test_compression import LARGE, SMALL, direct_frames

NODE_DIR = Path(__file__).parent / "node"
CLIENTS = ("default", "no-context-takeover", "small-window", "uncompressed")
SAID = {"said": "x" * 5000}
TIMEOUT = 15.0


@pytest.fixture(scope="module")
def node_script() -> tuple[str, Path]:
    """``node`` and the clients' script, with ``ws`` installed from the lock file."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is missing: apt-get install nodejs npm (CI installs it)")
    if not (NODE_DIR / "node_modules" / "ws").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is missing, so the Node clients' ws cannot be installed")
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=300
        )
    return node, NODE_DIR / "clients.mjs"


class NodeClients:
    """The Node process: its events as they arrive, and commands to its sockets."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()

    async def read_forever(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.events.append(json.loads(line))
            self._arrived.set()

    async def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Return once ``condition()`` holds; fail after :data:`TIMEOUT` seconds."""
        try:
            async with asyncio.timeout(TIMEOUT):
                while not condition():
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            pytest.fail(f"Node clients: no {what} within {TIMEOUT}s; events: {self.events}")

    def of(self, client: str, key: str) -> list[Any]:
        return [event[key] for event in self.events if event["client"] == client and key in event]

    def messages(self, client: str, key: str) -> list[Any]:
        """The messages of ``client`` that have ``key``."""
        return [m for m in self.of(client, "message") if isinstance(m, dict) and key in m]

    def send(self, client: str, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"client": client, "send": text}).encode() + b"\n")


@asynccontextmanager
async def node_clients(node_script: tuple[str, Path], url: str) -> AsyncIterator[NodeClients]:
    """The Node clients connected to ``url``; closed (code 1000) after, and the process gone."""
    node, script = node_script
    process = await asyncio.create_subprocess_exec(
        node, str(script), url, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    clients = NodeClients(process)
    reader = asyncio.create_task(clients.read_forever())
    try:
        yield clients
        assert process.stdin is not None
        process.stdin.close()
        async with asyncio.timeout(TIMEOUT):
            assert await process.wait() == 0
            await reader
        assert all(clients.of(name, "closed") == [1000] for name in CLIENTS), clients.events
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


@pytest.mark.parametrize("backend", ["memory"])
@pytest.mark.parametrize("policy", ["shared", "per-socket", "off"])
async def test_node_ws_clients_receive_every_broadcast_and_can_send(
    hub: PubSubHub, node_script: tuple[str, Path], policy: Compression
) -> None:
    protocol = PubSubWebSocketProtocol.with_compression(policy)
    async with (
        serve(build_app(hub), ws=protocol) as url,
        node_clients(node_script, f"{url}/ws/node") as clients,
    ):
        await clients.wait_for(
            lambda: all({"count": 4} in clients.of(name, "message") for name in CLIENTS),
            "presence count of 4 on every client",
        )
        before = direct_frames(hub, "node")
        for payload in (SMALL, LARGE, SMALL):
            await hub.publish("node", payload)
        await clients.wait_for(
            lambda: all(len(clients.messages(name, "kind")) == 3 for name in CLIENTS),
            "3 broadcasts on every client",
        )
        for name in CLIENTS:
            assert clients.messages(name, "kind") == [SMALL, LARGE, SMALL], name
        # Every delivery, compressed or not, was framed once and written directly.
        assert direct_frames(hub, "node") - before == 3 * len(CLIENTS)

        # A message the client compresses comes back to everybody.
        clients.send("default", json.dumps(SAID))
        await clients.wait_for(
            lambda: all(clients.messages(name, "echo") for name in CLIENTS), "echo everywhere"
        )
        for name in CLIENTS:
            assert clients.messages(name, "echo") == [{"echo": SAID}], name
        assert not any("error" in event for event in clients.events), clients.events
        assert not any(event.get("binary") for event in clients.events)

        offers = {name: clients.of(name, "extensions")[0] for name in CLIENTS}
        assert offers["uncompressed"] == ""
        compressing = [offers[name] for name in CLIENTS if name != "uncompressed"]
        if policy == "off":
            assert compressing == ["", "", ""]
        else:
            assert all(offer.startswith("permessage-deflate") for offer in compressing)
            assert "server_max_window_bits=10" in offers["small-window"]
            assert "server_no_context_takeover" in offers["no-context-takeover"]
            # shared: no socket keeps a context (one frame for all); per-socket: each does.
            kept = "server_no_context_takeover" not in offers["default"]
            assert kept == (policy == "per-socket")
