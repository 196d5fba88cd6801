"""The connections this worker holds, by channel."""

from __future__ import annotations

from collections.abc import Collection

from .client import ClientConnection


class LocalRegistry:
    """``channel -> {connection id: ClientConnection}``, in joining order."""

    __slots__ = ("_channels",)

    def __init__(self) -> None:
        self._channels: dict[str, dict[str, ClientConnection]] = {}

    def add(self, connection: ClientConnection) -> None:
        """Hold ``connection`` in its channel."""
        self._channels.setdefault(connection.channel, {})[connection.id] = connection

    def remove(self, connection: ClientConnection) -> bool:
        """Let go of ``connection``; True if it was held."""
        conns = self._channels.get(connection.channel)
        if conns is None or conns.pop(connection.id, None) is None:
            return False
        if not conns:
            del self._channels[connection.channel]
        return True

    def in_channel(self, channel: str) -> dict[str, ClientConnection] | None:
        """The live dict of ``channel``'s connections (None if there is none): for the
        fan-out loop, which copies it before iterating."""
        return self._channels.get(channel)

    def connections(self, channel: str) -> list[ClientConnection]:
        """``channel``'s connections."""
        return list(self._channels.get(channel, {}).values())

    def everyone(self) -> list[ClientConnection]:
        """Every connection held."""
        return [c for conns in self._channels.values() for c in conns.values()]

    def newest(self, channel: str) -> ClientConnection | None:
        """The connection that joined ``channel`` last."""
        conns = self._channels.get(channel)
        return next(reversed(conns.values())) if conns else None

    def ids(self, channel: str) -> Collection[str]:
        """Ids of ``channel``'s connections."""
        return self._channels.get(channel, {}).keys()

    def channels(self) -> Collection[str]:
        """Channels with at least one connection."""
        return self._channels.keys()

    def __contains__(self, channel: object) -> bool:
        return channel in self._channels

    def __len__(self) -> int:
        return sum(len(conns) for conns in self._channels.values())

    def intern(self, channel: str, connection_id: str) -> str:
        """The id string a held connection already has, if it is held: mirrors then store
        one string per local connection, not two."""
        conns = self._channels.get(channel)
        connection = conns.get(connection_id) if conns else None
        return connection.id if connection is not None else connection_id

    def clear(self) -> None:
        """Let go of everything."""
        self._channels.clear()
