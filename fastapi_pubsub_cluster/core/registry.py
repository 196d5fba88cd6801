"""The connections this worker holds, by channel."""

from __future__ import annotations

from collections.abc import Collection

from .client import ClientConnection


class LocalRegistry:
    """``channel -> {connection id: ClientConnection}``, in joining order, with indexes by
    connection id and by user id (for targeted sends)."""

    __slots__ = ("_by_id", "_by_user", "_channels")

    def __init__(self) -> None:
        self._channels: dict[str, dict[str, ClientConnection]] = {}
        self._by_id: dict[str, ClientConnection] = {}
        self._by_user: dict[str, dict[str, ClientConnection]] = {}

    def add(self, connection: ClientConnection) -> None:
        """Hold ``connection`` in its own channel."""
        self._channels.setdefault(connection.channel, {})[connection.id] = connection
        self._by_id[connection.id] = connection
        if connection.user_id is not None:
            self._by_user.setdefault(connection.user_id, {})[connection.id] = connection

    def add_to(self, channel: str, connection: ClientConnection) -> None:
        """Hold a connection already held in one more channel."""
        self._channels.setdefault(channel, {})[connection.id] = connection

    def remove_from(self, channel: str, connection: ClientConnection) -> bool:
        """Let go of ``connection`` in ``channel`` only; True if it was there."""
        conns = self._channels.get(channel)
        if conns is None or conns.pop(connection.id, None) is None:
            return False
        if not conns:
            del self._channels[channel]
        return True

    def remove(self, connection: ClientConnection) -> bool:
        """Let go of ``connection`` in every channel it is in; True if it was held."""
        if self._by_id.pop(connection.id, None) is None:
            return False
        for channel in connection.channels:
            self.remove_from(channel, connection)
        user = connection.user_id
        if user is not None:
            of_user = self._by_user.get(user)
            if of_user is not None:
                of_user.pop(connection.id, None)
                if not of_user:
                    del self._by_user[user]
        return True

    def by_id(self, connection_id: str) -> ClientConnection | None:
        """The connection with ``connection_id``, if held."""
        return self._by_id.get(connection_id)

    def of_user(self, user_id: str) -> list[ClientConnection]:
        """The connections of ``user_id`` held here."""
        return list(self._by_user.get(user_id, {}).values())

    def user_ids(self) -> dict[str, str | None]:
        """Every connection id held, with its user id (None without one)."""
        return {cid: c.user_id for cid, c in self._by_id.items()}

    def in_channel(self, channel: str) -> dict[str, ClientConnection] | None:
        """The live dict of ``channel``'s connections (None if there is none): for the
        fan-out loop, which copies it before iterating."""
        return self._channels.get(channel)

    def connections(self, channel: str) -> list[ClientConnection]:
        """``channel``'s connections."""
        return list(self._channels.get(channel, {}).values())

    def everyone(self) -> list[ClientConnection]:
        """Every connection held."""
        return list(self._by_id.values())

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
        return len(self._by_id)

    def intern(self, channel: str, connection_id: str) -> str:
        """The id string a held connection already has, if it is held: mirrors then store
        one string per local connection, not two."""
        conns = self._channels.get(channel)
        connection = conns.get(connection_id) if conns else None
        return connection.id if connection is not None else connection_id

    def clear(self) -> None:
        """Let go of everything."""
        self._channels.clear()
        self._by_id.clear()
        self._by_user.clear()
