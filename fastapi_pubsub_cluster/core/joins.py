"""Further channels a connection joins and leaves at runtime, beyond its own."""

from __future__ import annotations

import asyncio

from ..errors import ChannelLimitError, NotJoinedError
from ..frames import OutgoingFrame, event_frame
from ..settings import PubSubSettings
from .client import ClientConnection, ConnectionState
from .registration import Registration
from .registry import LocalRegistry
from .replay import StoredDelivery


class RuntimeJoins:
    """Joins and leaves of further channels: registered locally first, with the channel's
    messages held until the backend has the connection and the replay (``since``) is read,
    so the client gets ``joined``, then the replay, then live messages, none twice."""

    def __init__(
        self,
        registry: LocalRegistry,
        registration: Registration,
        settings: PubSubSettings,
        stored: StoredDelivery,
    ) -> None:
        self._local = registry
        self._registration = registration
        self._settings = settings
        self._stored = stored

    async def join(self, connection: ClientConnection, channel: str, since: str | None) -> bool:
        """Put ``connection`` in ``channel`` too, cluster-wide; False if it was in it
        already (it is told ``joined`` again). Raises InvalidChannelError, ChannelLimitError,
        NotJoinedError, or the backend's error (the join is then undone)."""
        settings = self._settings
        settings.validate_channel_id(channel)
        if since is not None:
            settings.validate_stream_id(since)
        if connection.state is not ConnectionState.OPEN:
            raise NotJoinedError("join further channels while the socket runs (from on_connect)")
        if connection.in_channel(channel):
            connection.send_event(event_frame("joined", channel))
            return False
        limit = settings.max_channels_per_socket
        if len(connection.channels) >= limit:
            raise ChannelLimitError(f"a socket may be in at most {limit} channels")
        # On a history channel "joined" tells the client where to resume from.
        start = await self._stored.resume_point(channel, since)
        told = {"last_id": start} if start is not None and settings.has_history(channel) else {}
        joined = event_frame("joined", channel, **told)
        connection.add_channel(channel)
        self._local.add_to(channel, connection)
        try:
            await self._registration.register(connection, channel, notify=True)
            first: list[OutgoingFrame] = [joined]
            replayed_to = None
            if start is not None:
                replay, replayed_to = await self._stored.replay_frames(
                    channel, start, report_gap=since is not None, tagged=True
                )
                first.extend(replay)
        except BaseException:
            if self._local.remove_from(channel, connection):
                connection.remove_channel(channel)
                self._registration.unregister(connection, [channel], notify=True)
            raise
        connection.release_channel(channel, first, replayed_to)
        return True

    async def leave(self, connection: ClientConnection, channel: str) -> bool:
        """Take ``connection`` out of further channel ``channel``, cluster-wide; False if
        it was not in it. Its own channel cannot be left (close the socket instead)."""
        if channel == connection.channel:
            raise NotJoinedError("a socket cannot leave its own channel; close it instead")
        if not connection.remove_channel(channel):
            return False
        self._local.remove_from(channel, connection)
        connection.send_event(event_frame("left", channel))
        await asyncio.shield(self._registration.unregister(connection, [channel], notify=True))
        return True
