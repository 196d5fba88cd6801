"""Where a client connection is in its life, and what its outbox needs of it."""

from __future__ import annotations

from enum import Enum
from typing import Protocol

from starlette.websockets import WebSocket


class ConnectionState(Enum):
    """Where a connection is in its life, as the core sees it."""

    HOLDING = "holding"  # registered; messages kept aside until the handshake completes
    OPEN = "open"  # messages flow
    EVICTED = "evicted"  # fell behind; being closed with 1008
    CLOSED = "closed"  # closing, closed or lost: takes nothing more


class OutboxConnection(Protocol):
    """What an outbox reads of its connection, and tells it. The connection alone changes
    its state; the outbox tells it what happened."""

    @property
    def state(self) -> ConnectionState: ...

    @property
    def id(self) -> str: ...

    @property
    def channel(self) -> str: ...

    @property
    def websocket(self) -> WebSocket: ...

    @property
    def wire_format(self) -> str: ...

    def fell_behind(self) -> None:
        """The client fell behind and is being closed: it must be unregistered at once."""

    def lost_oldest(self) -> None:
        """The client lost its oldest queued message (``drop_oldest`` policy)."""

    def mark_evicted(self) -> None:
        """The client fell behind: it takes nothing more and is being closed with 1008."""

    def mark_closed(self) -> None:
        """The socket is closing: it takes nothing more (an eviction stays one)."""

    def mark_lost(self) -> None:
        """A send failed: the client vanished."""
