"""Where a client connection is in its life, and what it tells the core that registered it."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .client import ClientConnection


class ConnectionOwner(Protocol):
    """What a connection tells the core that registered it."""

    def connection_evicted(self, connection: ClientConnection) -> None:
        """``connection`` fell behind and is being closed: unregister it at once."""

    def message_dropped(self, connection: ClientConnection) -> None:
        """``connection`` lost its oldest queued message (``drop_oldest`` policy)."""


class ConnectionState(Enum):
    """Where a connection is in its life, as the core sees it."""

    HOLDING = "holding"  # registered; messages kept aside until the handshake completes
    OPEN = "open"  # messages flow
    EVICTED = "evicted"  # fell behind; being closed with 1008
    CLOSED = "closed"  # closing, closed or lost: takes nothing more
