"""The driver's handle on the client processes (two by default, BENCHMARKS.md)."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from benchmarks.clients import client_main
from benchmarks.targets import Protocol

PIPE_TIMEOUT = 120.0
CONNECTS_PER_SECOND_AT_WORST = 25.0


class ClientError(RuntimeError):
    """A client process failed or did not answer."""


@dataclass
class Counts:
    received: int
    last_receipt_us: int
    heard_from: int
    open: int
    wire_bytes: int = 0


@dataclass
class Collected(Counts):
    latencies_us: list[int] = field(default_factory=list)


class ClientPool:
    """Client processes sharing the connections of one configuration between them."""

    def __init__(
        self,
        protocol: Protocol,
        processes: int = 2,
        main: Callable[[Connection, str], None] = client_main,
    ) -> None:
        """``processes`` client processes, each running ``main(pipe, protocol)``."""
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._processes: list[BaseProcess] = []
        for _ in range(processes):
            ours, theirs = context.Pipe()
            process = context.Process(target=main, args=(theirs, protocol.value), daemon=True)
            process.start()
            theirs.close()
            self._pipes.append(ours)
            self._processes.append(process)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p.pid is not None]

    async def _ask(
        self, pipe: Connection, command: str, argument: Any = None, timeout: float = PIPE_TIMEOUT
    ) -> Any:
        pipe.send((command, argument))
        return await asyncio.to_thread(self._answer, pipe, timeout)

    @staticmethod
    def _answer(pipe: Connection, timeout: float) -> Any:
        if not pipe.poll(timeout):
            raise ClientError(f"a client process did not answer within {timeout:.0f}s")
        return pipe.recv()

    async def connect(self, targets: list[tuple[str, str, bool]]) -> int:
        """Open one connection per ``(url, channel, offers deflate)``, spread over the
        processes."""
        shares = [targets[i :: len(self._pipes)] for i in range(len(self._pipes))]
        # Slow handshakes (engine.io, JSON-RPC) at 10,000 sockets take minutes.
        timeout = max(PIPE_TIMEOUT, len(targets) / CONNECTS_PER_SECOND_AT_WORST)
        replies = await asyncio.gather(
            *(
                self._ask(pipe, "connect", share, timeout)
                for pipe, share in zip(self._pipes, shares, strict=True)
            )
        )
        failures = [f for reply in replies for f in reply["failures"]]
        opened = sum(int(reply["open"]) for reply in replies)
        if failures:
            raise ClientError(f"{len(targets) - opened} connections failed, e.g. {failures[0]}")
        return opened

    async def counts(self) -> Counts:
        replies = await asyncio.gather(*(self._ask(pipe, "count") for pipe in self._pipes))
        return Counts(
            received=sum(r["received"] for r in replies),
            last_receipt_us=max(r["last_receipt_us"] for r in replies),
            heard_from=sum(r["heard_from"] for r in replies),
            open=sum(r["open"] for r in replies),
            wire_bytes=sum(r["wire_bytes"] for r in replies),
        )

    async def collect(self, reset: bool = True) -> Collected:
        """Counts and latencies since the last reset; resets them when ``reset``."""
        replies = await asyncio.gather(*(self._ask(pipe, "collect", reset) for pipe in self._pipes))
        return Collected(
            received=sum(r["received"] for r in replies),
            last_receipt_us=max(r["last_receipt_us"] for r in replies),
            heard_from=sum(r["heard_from"] for r in replies),
            open=sum(r["open"] for r in replies),
            wire_bytes=sum(r["wire_bytes"] for r in replies),
            latencies_us=[x for r in replies for x in r["latencies_us"]],
        )

    def close(self) -> None:
        """Stop every client process (politely, then by force)."""
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop", None))
        deadline = time.monotonic() + 10
        for process in self._processes:
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(5)
        for pipe in self._pipes:
            pipe.close()
