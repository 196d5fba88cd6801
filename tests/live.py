"""Live servers in this process and real websocket clients for the tests (no test client, no
mocks). Server processes (uvicorn workers, commands) are in ``tools.processes``."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
import websockets
from websockets.asyncio.client import ClientConnection


@asynccontextmanager
async def serve(app: Any, **options: Any) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn in this event loop; yields ``ws://127.0.0.1:PORT``.
    ``options`` go to ``uvicorn.Config`` (e.g. ``ws=`` a protocol class)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_level="warning",
        ws_max_size=16 * 1024 * 1024,
        timeout_graceful_shutdown=5,
        **options,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await wait_for_condition(lambda: server.started or task.done(), 10)
        if task.done():
            task.result()
        yield f"ws://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)
        sock.close()


async def wait_for_condition(predicate: Callable[[], bool], timeout: float) -> None:
    """Return as soon as ``predicate()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


async def wait_for_async_condition(check: Callable[[], Awaitable[bool]], timeout: float) -> float:
    """Return, as soon as ``await check()`` holds, the seconds it took; fail after
    ``timeout`` seconds."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def reconnect_signal(hub: Any) -> asyncio.Event:
    """An event set each time ``hub``'s Redis link comes back (through the public hook)."""
    reconnected = asyncio.Event()

    async def mark() -> None:
        reconnected.set()

    hub.add_reconnect_hook(mark)
    return reconnected


async def connect(url: str, **kwargs: Any) -> ClientConnection:
    """A real websocket client."""
    return await websockets.connect(url, open_timeout=10, **kwargs)


async def recv_json(ws: ClientConnection, timeout: float = 5.0) -> Any:
    """The next message, decoded from JSON."""
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_until(
    ws: ClientConnection,
    predicate: Callable[[Any], bool],
    timeout: float = 10.0,
    skipped: list[Any] | None = None,
) -> Any:
    """Read messages until one satisfies ``predicate``; return it. The others read on the
    way are appended to ``skipped`` when given."""
    async with asyncio.timeout(timeout):
        while True:
            message = json.loads(await ws.recv())
            if predicate(message):
                return message
            if skipped is not None:
                skipped.append(message)


async def last_message_when_quiet(ws: ClientConnection, quiet: float, first: Any = None) -> Any:
    """Read until no message arrives for ``quiet`` seconds; return the last one read."""
    last = first
    while True:
        try:
            last = json.loads(await asyncio.wait_for(ws.recv(), quiet))
        except TimeoutError:
            return last


async def close_code_of(ws: ClientConnection, timeout: float = 10.0) -> int | None:
    """Read until the server closes the socket; return its close code."""
    async with asyncio.timeout(timeout):
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed:
            pass
    return ws.close_code


async def stalled_client(url: str) -> ClientConnection:
    """A client that stops reading: its library buffers one frame, its kernel 64 KiB."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A fixed receive buffer turns off autotuning, which would otherwise absorb megabytes.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    host, port = url.removeprefix("ws://").split("/")[0].split(":")
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    return await connect(url, sock=sock, max_queue=1, max_size=None, compression=None)


async def connect_identified(url: str) -> tuple[ClientConnection, str]:
    """A client of a socket that tells its connection id first (``{"me": id}``), and the id."""
    ws = await connect(url)
    me = await recv_until(ws, lambda m: "me" in m)
    return ws, str(me["me"])


async def join_in_a_burst(url: str, hub: Any, sockets: int = 300, channels: int = 20) -> None:
    """``sockets`` identified clients with a user each join ``channels`` channels at once;
    every join must succeed and count. (``url`` is the app's base, ``hub`` its hub.)"""
    clients = await asyncio.gather(
        *(connect(f"{url}/id/burst-{i % channels}?user=u{i}") for i in range(sockets))
    )
    for ws in clients:
        assert "me" in await recv_until(ws, lambda m: "me" in m)
    counts = [await hub.count(f"burst-{i}") for i in range(channels)]
    assert counts == [sockets // channels] * channels
    await asyncio.gather(*(ws.close() for ws in clients))
