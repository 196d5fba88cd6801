"""Ceiling: the ``websockets`` asyncio server and ``broadcast()``, no ASGI in between.

Run: ``python -m benchmarks.apps.websockets_server --port PORT [--compression deflate]``
(with deflate, ``broadcast()`` compresses for each connection: a context per socket).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from http import HTTPStatus

from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.http11 import Request, Response

from benchmarks.apps import CONTROL_PATH, split_control_frame
from tools.processes import raise_open_files_limit

channels: dict[str, set[ServerConnection]] = {}


def health(connection: ServerConnection, request: Request) -> Response | None:
    if request.path == "/healthz":
        return connection.respond(HTTPStatus.OK, "ok\n")
    return None


async def handler(connection: ServerConnection) -> None:
    path = connection.request.path if connection.request is not None else ""
    if path == CONTROL_PATH:
        async for frame in connection:
            channel, payload = split_control_frame(str(frame))
            broadcast(channels.get(channel, ()), payload)
        return
    channel = path.removeprefix("/ws/")
    members = channels.setdefault(channel, set())
    members.add(connection)
    try:
        await connection.wait_closed()
    finally:
        members.discard(connection)


async def main(port: int, compression: str | None) -> None:
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    server: Server
    async with serve(
        handler,
        "127.0.0.1",
        port,
        process_request=health,
        compression=compression,
        # As the uvicorn servers (--backlog 4096): a storm of thousands of connections at
        # once must not meet a shorter accept queue here than there.
        backlog=4096,
        ping_interval=None,  # as every measured server (benchmarks.servers.KEEPALIVE_NOTE)
    ) as server:
        await stop
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--compression", choices=["deflate"], default=None)
    arguments = parser.parse_args()
    raise_open_files_limit()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(arguments.port, arguments.compression))
    else:
        uvloop.run(main(arguments.port, arguments.compression))
