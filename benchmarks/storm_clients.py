"""A storm client process: all its connections at the same moment, then every one of them
aborted (a TCP reset, no close frame) and all reconnecting at the same moment.

Driven over a pipe by :class:`benchmarks.storm.StormPool`: ``round`` (connect the given
URLs at a wall-clock time, after aborting the previous round's connections when asked),
``stats`` (what the round's connections saw so far) and ``stop``. Nothing is retried: a
connection that fails or is closed by the server counts as refused, with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import struct
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from benchmarks.clients import (
    now_us,
    protocol_handshake,
    rpc_ack,
    run_client_process,
    sent_us_of,
)
from benchmarks.targets import Protocol

#: The count frame of the README's original example.
COUNT_MARKER = '"num_connected_clients":'
#: How long one connection may take to open (websocket and the protocol's own handshake).
HANDSHAKE_TIMEOUT = 60.0
#: Reasons kept per kind of refusal (the rest are only counted).
SAMPLES_PER_KIND = 2


def count_of(frame: str) -> int | None:
    """The number in a ``{"num_connected_clients": N}`` frame; None in any other frame."""
    start = frame.find(COUNT_MARKER)
    if start < 0:
        return None
    index = start + len(COUNT_MARKER)
    while index < len(frame) and frame[index] == " ":
        index += 1
    end = index
    while end < len(frame) and frame[end].isdigit():
        end += 1
    return int(frame[index:end]) if end > index else None


def refusal_of(exc: BaseException) -> tuple[str, str]:
    """(kind, detail) of a connection that could not be opened."""
    if isinstance(exc, websockets.InvalidStatus):
        return f"http {exc.response.status_code}", repr(exc)
    if isinstance(exc, websockets.ConnectionClosed):
        code = exc.rcvd.code if exc.rcvd is not None else 1006
        reason = exc.rcvd.reason if exc.rcvd is not None else "no close frame"
        return f"close {code}", reason
    if isinstance(exc, TimeoutError):
        return "timeout", f"no handshake within {HANDSHAKE_TIMEOUT:.0f}s"
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"os {errno.errorcode.get(exc.errno, exc.errno)}", repr(exc)
    return type(exc).__name__, repr(exc)


@dataclass
class Slot:
    """One connection of a round."""

    ws: ClientConnection | None = None
    #: When the handshake was done (µs since the epoch), 0 until then.
    handshake_us: int = 0
    #: Kind of refusal ("close 1013", "http 503", "timeout"...), None while it stands.
    refused: str | None = None
    #: Set before this side aborts it: its end is not a refusal.
    aborted: bool = False
    frames: int = 0
    count_frames: int = 0
    last_count: int = -1
    last_count_us: int = 0
    #: When the first message published after the handshake arrived, 0 until then.
    probe_us: int = 0

    @property
    def open(self) -> bool:
        return self.handshake_us > 0 and self.refused is None

    def record(self, frame: str) -> None:
        now = now_us()
        self.frames += 1
        count = count_of(frame)
        if count is not None:
            self.count_frames += 1
            self.last_count = count
            self.last_count_us = now
        elif self.probe_us == 0 and sent_us_of(frame) >= self.handshake_us:
            self.probe_us = now


class StormClient:
    """The event-loop side of one storm client process."""

    def __init__(self, pipe: Connection, protocol: Protocol) -> None:
        self.pipe = pipe
        self.protocol = protocol
        self.slots: list[Slot] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.samples: dict[str, list[str]] = {}
        self.stopped = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.pipe.fileno(), self._on_command)
        try:
            await self.stopped.wait()
        finally:
            loop.remove_reader(self.pipe.fileno())
            self._abort_all()

    def _on_command(self) -> None:
        fd = self.pipe.fileno()
        os.set_blocking(fd, True)  # a long connect list arrives in pieces: read it whole
        try:
            command, argument = self.pipe.recv()
        except EOFError:
            self.stopped.set()
            return
        finally:
            os.set_blocking(fd, False)
        if command == "round":
            task = asyncio.get_running_loop().create_task(self._round(**argument))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            self._reply("started")
        elif command == "stats":
            self._reply(self._stats(int(argument)))
        elif command == "stop":
            self.stopped.set()

    def _reply(self, answer: object) -> None:
        fd = self.pipe.fileno()
        os.set_blocking(fd, True)
        try:
            self.pipe.send(answer)
        finally:
            os.set_blocking(fd, False)

    async def _round(self, start_us: int, urls: list[tuple[str, str]], abort: bool) -> None:
        delay = (start_us - now_us()) / 1e6
        if delay > 0:
            await asyncio.sleep(delay)
        if abort:
            self._abort_all()
        self.slots = [Slot() for _ in urls]
        self.samples = {}
        loop = asyncio.get_running_loop()
        for slot, (url, channel) in zip(self.slots, urls, strict=True):
            task = loop.create_task(self._connection(slot, url, channel))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _abort_all(self) -> None:
        """Drop every connection as a network failure would: a TCP reset, no close frame."""
        for slot in self.slots:
            slot.aborted = True
            if slot.ws is None:
                continue
            transport = slot.ws.transport
            sock = transport.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        for task in list(self.tasks):
            if task is not asyncio.current_task():
                task.cancel()

    def _refuse(self, slot: Slot, kind: str, detail: str) -> None:
        if slot.aborted:
            return
        slot.refused = kind
        samples = self.samples.setdefault(kind, [])
        if len(samples) < SAMPLES_PER_KIND:
            samples.append(detail)

    async def _connection(self, slot: Slot, url: str, channel: str) -> None:
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                slot.ws = await websockets.connect(
                    url,
                    compression=None,
                    max_size=None,
                    ping_interval=None,
                    open_timeout=None,  # the timeout above bounds the whole handshake
                    close_timeout=1,
                )
                await protocol_handshake(slot.ws, self.protocol, channel)
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            self._refuse(slot, *refusal_of(exc))
            return
        if slot.aborted:
            return
        slot.handshake_us = now_us()
        ws = slot.ws
        try:
            async for message in ws:
                text = message if isinstance(message, str) else message.decode()
                if self.protocol is Protocol.PLAIN:
                    slot.record(text)
                elif self.protocol is Protocol.ENGINEIO:
                    if text == "2":
                        await ws.send("3")
                    elif text.startswith("42"):
                        slot.record(text)
                elif '"notify"' in text:
                    slot.record(text)
                    await ws.send(rpc_ack(text))
        except websockets.ConnectionClosed:
            pass
        code = ws.close_code if ws.close_code is not None else 1006
        self._refuse(slot, f"close {code}", ws.close_reason or "")

    def _stats(self, expected: int) -> dict[str, Any]:
        """The round so far; ``expected`` is the count every open client should show."""
        opened = [slot for slot in self.slots if slot.open]
        return {
            "attempts": len(self.slots),
            "pending": sum(1 for s in self.slots if s.handshake_us == 0 and s.refused is None),
            "admitted": len(opened),
            "refused": dict(Counter(s.refused for s in self.slots if s.refused is not None)),
            "samples": self.samples,
            "handshake_last_us": max((s.handshake_us for s in self.slots), default=0),
            "probe_missing": sum(1 for s in opened if s.probe_us == 0),
            "probe_last_us": max((s.probe_us for s in opened), default=0),
            "count_right": sum(1 for s in opened if s.last_count == expected),
            "count_last_us": max((s.last_count_us for s in opened), default=0),
            "count_frames": sum(s.count_frames for s in opened),
            "count_frames_max": max((s.count_frames for s in opened), default=0),
            "frames": sum(s.frames for s in self.slots),
            "frames_max": max((s.frames for s in opened), default=0),
        }


def storm_client_main(pipe: Connection, protocol: str) -> None:
    """Entry point of a storm client process."""
    run_client_process(StormClient(pipe, Protocol(protocol)).run())
