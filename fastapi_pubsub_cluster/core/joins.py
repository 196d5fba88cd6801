"""Further channels a connection joins and leaves at runtime, beyond its own."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..codec import OutgoingFrame, event_frame
from ..errors import ChannelLimitError, NotJoinedError
from ..settings import PubSubSettings
from .backend import Backend
from .client import ClientConnection, ConnectionState
from .registry import LocalRegistry
from .replay import StoredDelivery

#: Starts the cluster-wide removal of a connection from one channel, as a task of the core.
SpawnLeave = Callable[[str, ClientConnection, bool], "asyncio.Task[None]"]


class RuntimeJoins:
    """Joins and leaves of further channels: registered locally first, with the channel's
    messages held until the backend has the connection and the replay (``since``) is read,
    so the client gets ``joined``, then the replay, then live messages, none twice."""

    def __init__(
        self,
        registry: LocalRegistry,
        backend: Backend,
        settings: PubSubSettings,
        stored: StoredDelivery,
        spawn_leave: SpawnLeave,
    ) -> None:
        self._local = registry
        self._backend = backend
        self._settings = settings
        self._stored = stored
        self._spawn_leave = spawn_leave

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
            await self._backend.join(
                channel, connection.id, notify=True, metadata=connection.metadata, directory=False
            )
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
                self._spawn_leave(channel, connection, True)
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
        await asyncio.shield(self._spawn_leave(channel, connection, True))
        return True
