"""Light websocket clients: many connections per process, minimal parsing.

A client process is driven over a pipe by :class:`benchmarks.client_pool.ClientPool`.
Every frame is counted; its latency is read from the ``"sent_us":`` field of the payload
(microseconds since the epoch, set by the publisher) without decoding the JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from benchmarks.targets import Protocol
from tools.processes import raise_open_files_limit

MARKER = '"sent_us":'
CONNECT_CONCURRENCY = 64
CONNECT_ATTEMPTS = 3
HANDSHAKE_TIMEOUT = 20.0


def sent_us_of(frame: str) -> int:
    """The publisher's timestamp inside ``frame``; 0 when absent."""
    start = frame.find(MARKER)
    if start < 0:
        return 0
    index = start + len(MARKER)
    while frame[index] == " ":
        index += 1
    end = index
    while end < len(frame) and frame[end].isdigit():
        end += 1
    return int(frame[index:end]) if end > index else 0


def now_us() -> int:
    return time.time_ns() // 1000


class WireCounting(ClientConnection):
    """A client connection that counts the bytes it receives from the network (frames as
    sent, compressed or not, headers included)."""

    wire_bytes = 0

    def data_received(self, data: bytes) -> None:
        WireCounting.wire_bytes += len(data)
        super().data_received(data)


@dataclass
class Tally:
    """What this process's sockets received since the last reset."""

    received: int = 0
    last_receipt_us: int = 0
    latencies_us: list[int] = field(default_factory=list)
    heard_from: set[int] = field(default_factory=set)

    def record(self, index: int, frame: str) -> None:
        now = now_us()
        self.received += 1
        self.last_receipt_us = now
        sent = sent_us_of(frame)
        if sent:
            self.latencies_us.append(now - sent)
        self.heard_from.add(index)


class ClientProcess:
    """The event-loop side of one client process."""

    def __init__(self, pipe: Connection, protocol: Protocol) -> None:
        self.pipe = pipe
        self.protocol = protocol
        self.tally = Tally()
        self.sockets: list[ClientConnection] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.failures: list[str] = []
        self.stopped = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.pipe.fileno(), self._on_command)
        try:
            await self.stopped.wait()
        finally:
            loop.remove_reader(self.pipe.fileno())
            await self._close_all()

    def _on_command(self) -> None:
        # The event loop made the pipe non-blocking to watch it; a large command (a long
        # connect list) arrives in pieces, so read it whole in blocking mode.
        fd = self.pipe.fileno()
        os.set_blocking(fd, True)
        try:
            command, argument = self.pipe.recv()
        except EOFError:
            self.stopped.set()
            return
        finally:
            os.set_blocking(fd, False)
        handlers: dict[str, Callable[[Any], None]] = {
            "connect": self._start_connecting,
            "count": lambda _: self._reply(self._counts()),
            "collect": self._collect,
            "stop": lambda _: self.stopped.set(),
        }
        handlers[command](argument)

    def _reply(self, answer: object) -> None:
        # The event loop made the pipe non-blocking to watch it; a large answer (latencies)
        # would fail with EAGAIN, so write it in blocking mode. The driver is reading.
        fd = self.pipe.fileno()
        os.set_blocking(fd, True)
        try:
            self.pipe.send(answer)
        finally:
            os.set_blocking(fd, False)

    def _counts(self) -> dict[str, int]:
        return {
            "received": self.tally.received,
            "last_receipt_us": self.tally.last_receipt_us,
            "heard_from": len(self.tally.heard_from),
            "open": sum(1 for ws in self.sockets if ws.close_code is None),
            "wire_bytes": WireCounting.wire_bytes,
        }

    def _collect(self, reset: Any) -> None:
        report: dict[str, Any] = {**self._counts(), "latencies_us": self.tally.latencies_us}
        self._reply(report)
        if reset:
            self.tally = Tally()
            WireCounting.wire_bytes = 0

    def _start_connecting(self, targets: Any) -> None:
        task = asyncio.get_running_loop().create_task(self._connect_all(targets))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _connect_all(self, targets: list[tuple[str, str, bool]]) -> None:
        semaphore = asyncio.Semaphore(CONNECT_CONCURRENCY)
        failures_before = len(self.failures)

        async def one(url: str, channel: str, deflate: bool) -> None:
            async with semaphore:
                await self._connect(url, channel, deflate)

        await asyncio.gather(*(one(url, channel, deflate) for url, channel, deflate in targets))
        self.pipe.send({"open": len(self.sockets), "failures": self.failures[failures_before:][:5]})

    async def _connect(self, url: str, channel: str, deflate: bool) -> None:
        for attempt in range(CONNECT_ATTEMPTS):
            try:
                ws = await websockets.connect(
                    url,
                    # "deflate" offers "permessage-deflate; client_max_window_bits", as
                    # Chromium and Node's ws do.
                    compression="deflate" if deflate else None,
                    create_connection=WireCounting,
                    max_size=None,
                    ping_interval=None,
                    open_timeout=HANDSHAKE_TIMEOUT,
                    close_timeout=1,
                )
                async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                    await protocol_handshake(ws, self.protocol, channel)
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                if attempt == CONNECT_ATTEMPTS - 1:
                    self.failures.append(f"{url}: {exc!r}")
                    return
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            index = len(self.sockets)
            self.sockets.append(ws)
            task = asyncio.get_running_loop().create_task(self._consume(ws, index))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return

    async def _consume(self, ws: ClientConnection, index: int) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            if self.protocol is Protocol.PLAIN:
                async for frame in ws:
                    self.tally.record(index, frame if isinstance(frame, str) else frame.decode())
            elif self.protocol is Protocol.ENGINEIO:
                async for frame in ws:
                    text = frame if isinstance(frame, str) else frame.decode()
                    if text == "2":
                        await ws.send("3")
                    elif text.startswith("42"):
                        self.tally.record(index, text)
            else:
                async for frame in ws:
                    text = frame if isinstance(frame, str) else frame.decode()
                    if '"notify"' in text:
                        self.tally.record(index, text)
                        await ws.send(rpc_ack(text))

    async def _close_all(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)


async def protocol_handshake(ws: ClientConnection, protocol: Protocol, channel: str) -> None:
    """What a client does after the websocket handshake before it is in ``channel``:
    engine.io's open and namespace connect, or fastapi_websocket_pubsub's subscribe call."""
    if protocol is Protocol.ENGINEIO:
        opening = str(await ws.recv())
        if not opening.startswith("0"):
            raise websockets.InvalidHandshake(f"engine.io open expected, got {opening!r}")
        await ws.send("40")
        while not str(await ws.recv()).startswith("40"):
            pass
    elif protocol is Protocol.PERMIT_RPC:
        call_id = str(uuid.uuid4())
        request = {"method": "subscribe", "arguments": {"topics": [channel]}}
        await ws.send(json.dumps({"request": {**request, "call_id": call_id}}))
        while call_id not in str(await ws.recv()):
            pass


def rpc_ack(request: str) -> str:
    """The JSON-RPC response a fastapi_websocket_pubsub client sends for a ``notify`` call."""
    start = request.find('"call_id"')
    call_id = ""
    if start >= 0:
        open_quote = request.find('"', request.find(":", start) + 1)
        call_id = request[open_quote + 1 : request.find('"', open_quote + 1)]
    return f'{{"response":{{"result":null,"result_type":"NoneType","call_id":"{call_id}"}}}}'


def client_main(pipe: Connection, protocol: str) -> None:
    """Entry point of a client process."""
    run_client_process(ClientProcess(pipe, Protocol(protocol)).run())


def run_client_process(main: Coroutine[Any, Any, None]) -> None:
    """Run a client process's ``main`` with as many open files as the system allows, on
    uvloop where it is installed."""
    raise_open_files_limit()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)
