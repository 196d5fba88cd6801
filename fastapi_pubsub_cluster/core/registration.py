"""Registering this worker's connections cluster-wide, and deciding which channels it hears."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..errors import HubClosedError, describe
from ..tasks import TaskSupervisor
from .backend import PresenceStore, Transport
from .client import ClientConnection

logger = logging.getLogger("fastapi_pubsub_cluster")


class Registration:
    """Puts connections in channels on every worker and takes them out.

    The core decides what this worker hears: a channel is followed before its first
    local connection registers or its first server-side subscriber reads (so that its
    own join is heard, in order after the channel's snapshot), and unfollowed after the
    last one is gone. Decisions are made under one lock, from the core's state at that
    moment (``listens``), so that a first join and a last leave racing each other can
    never leave a channel followed without listeners, or listeners without it.
    """

    def __init__(
        self,
        transport: Transport,
        presence: PresenceStore,
        tasks: TaskSupervisor,
        *,
        listens: Callable[[str], bool],
        unfollowed: Callable[[str], None],
    ) -> None:
        self._transport = transport
        self._presence = presence
        self._tasks = tasks
        self._listens = listens
        self._unfollowed = unfollowed
        self._lock = asyncio.Lock()
        self._followed: set[str] = set()
        self._following: set[str] = set()  # a follow in progress

    def follows(self, channel: str) -> bool:
        """True while ``channel`` is followed, or being followed: what the transport
        reports of any other channel (a snapshot it was loading as the core let go of the
        channel) concerns nobody here."""
        return channel in self._followed or channel in self._following

    async def update_following(self, channel: str) -> None:
        """Follow or unfollow ``channel`` as the core's listeners now need."""
        if channel in self._followed and self._listens(channel):
            return  # most joins: followed already (an unfollow leaves the set before it awaits)
        async with self._lock:
            wanted = self._listens(channel)
            if wanted and channel not in self._followed:
                self._following.add(channel)
                try:
                    await self._transport.follow(channel)  # raises: not followed
                finally:
                    self._following.discard(channel)
                self._followed.add(channel)
            elif not wanted and channel in self._followed:
                self._followed.discard(channel)
                self._unfollowed(channel)  # at once: nothing it hears now concerns anyone
                await self._transport.unfollow(channel)

    async def register(self, connection: ClientConnection, channel: str, *, notify: bool) -> None:
        """Follow ``channel`` (if not yet), then register ``connection`` there (already held
        locally); in its own channel with its user and in the directory of targeted sends."""
        own = channel == connection.channel
        await self.update_following(channel)
        await self._presence.join(
            channel,
            connection.id,
            notify=notify,
            user_id=connection.user_id if own else None,
            metadata=connection.metadata,
            directory=own,
        )

    def unregister(
        self, connection: ClientConnection, channels: list[str], *, notify: bool
    ) -> asyncio.Task[None]:
        """Unregister ``connection`` (no longer held locally) from ``channels``, as a task
        of the core's, so that it completes even when the caller is cancelled. Further
        channels first: the own channel's leave also ends the directory entry."""
        own = connection.channel
        ordered = [c for c in channels if c != own] + [c for c in channels if c == own]
        return self._tasks.spawn(
            self._leave_all(ordered, connection.id, own, notify),
            name=f"pubsub-leave-{connection.id}",
        )

    async def _leave_all(
        self, channels: list[str], connection_id: str, own: str, notify: bool
    ) -> None:
        for channel in channels:
            try:
                await self._presence.leave(
                    channel, connection_id, notify=notify, directory=channel == own
                )
            except Exception as exc:  # the store reconciles it; nothing to tell the socket
                logger.warning("leave of %s not recorded yet: %s", connection_id, describe(exc))
            await self.unfollow_if_unused(channel)

    async def unfollow_if_unused(self, channel: str) -> None:
        """Unfollow ``channel`` if nothing here listens to it any more; a failure is logged
        (a transport that lost its link drops the channel when it reconnects)."""
        try:
            await self.update_following(channel)
        except HubClosedError:
            pass  # stopped: every subscription is gone already
        except Exception as exc:
            logger.debug("could not unfollow %r: %r", channel, exc)

    def forget_all(self) -> None:
        """The backend stopped: nothing is followed any more."""
        self._followed.clear()
        self._following.clear()
