"""This worker's presence in Redis: its instance, its entries, and what is in doubt.

Presence converges by design rather than by patching each failure path: every entry is
owned by a worker *instance* (the worker's id and an epoch), and every heartbeat the worker
reconciles its entries against its local truth (:mod:`.upkeep`). A channel whose state in
Redis is in doubt (a command that failed or timed out, a lost link, a lost heartbeat) is
reconciled at the next heartbeat; every channel is reconciled now and then regardless.
Joins and leaves reach Redis through the admission queue (:mod:`.presence_writes`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from ...core.backend import FanOutSink
from ...errors import PresenceError
from ...frames import encode_json
from ...metrics import Metrics
from ...settings import PubSubSettings
from .clients import PresenceClients
from .directory import Directory
from .gate import ChannelGate
from .keys import RedisKeys
from .presence_writes import Change, ChangeQueue, ChangeWriter

logger = logging.getLogger("fastapi_pubsub_cluster")


class Presence:
    """Registers this worker's connections, as its current instance.

    Each local connection is a member of its channel's set, owned by this worker's current
    instance; the channels the instance holds sockets in are listed under its own key. A
    worker that finds its own instance claimed (it stalled past its TTL) moves to a new
    epoch (see :class:`~.upkeep.PresenceUpkeep`), so that a reaper still busy with the old
    instance cannot remove what the new one registers.
    """

    def __init__(
        self,
        clients: PresenceClients,
        keys: RedisKeys,
        settings: PubSubSettings,
        *,
        worker_id: str,
        publish_command: str,
        metrics: Metrics,
        local: FanOutSink,
    ) -> None:
        client = clients.commands
        self._client = client
        self._keys = keys
        self._worker_id = worker_id
        #: This worker's epoch: a new one whenever its instance was claimed.
        self.epoch = 1
        #: Channels listed under this instance's key, as far as this worker knows.
        self.recorded_channels: set[str] = set()
        #: Channels whose entries in Redis are in doubt, reconciled at the next heartbeat.
        self.in_doubt: set[str] = set()
        #: Channels this worker left (no socket here any more): reconciled once more, so
        #: that an entry a failed leave left behind goes, then dropped from its record.
        self.vacated: set[str] = set()
        #: Keeps reconciliations from racing this worker's own joins and leaves.
        self.gate = ChannelGate()
        #: Which worker holds which connection, and whose it is (targeted sends).
        self.directory = Directory(
            client,
            keys,
            worker_id=worker_id,
            instance=lambda: self.instance,
            publish_command=publish_command,
            local=local,
            gate=self.gate,
            inline=publish_command == "PUBLISH",
        )
        writer = ChangeWriter(
            clients.writes,
            keys,
            worker_id=worker_id,
            instance=lambda: self.instance,
            publish_command=publish_command,
            directory=self.directory,
            gate=self.gate,
            recorded=self.recorded_channels.update,
        )
        #: Joins and leaves on their way to Redis, in batches (the admission queue).
        self.changes = ChangeQueue(
            writer.write,
            answers=clients.answers,
            capacity=settings.admission_queue_size,
            target=clients.target,
            metrics=metrics,
            doubt=self._doubt_changes,
        )

    @property
    def instance(self) -> str:
        """Who owns this worker's entries now: its id and its epoch."""
        return f"{self._worker_id}#{self.epoch}"

    def doubt(self, channels: Iterable[str]) -> None:
        """Reconcile ``channels`` at the next heartbeat."""
        self.in_doubt.update(channels)

    def _doubt_changes(self, changes: list[Change]) -> None:
        self.in_doubt.update(change.channel for change in changes)
        if any(change.directory for change in changes):
            self.directory.doubt()

    # -- entries -----------------------------------------------------------------------

    async def register(
        self,
        channel: str,
        connection_id: str,
        *,
        notify: bool,
        metadata: Mapping[str, Any] | None = None,
        user_id: str | None = None,
        directory: bool = True,
    ) -> None:
        """Add a connection to its channel, with its metadata (and with ``directory``, its
        directory entries), announced once, in the next batch. Raises PresenceError if
        Redis does not answer; the channel is then reconciled at the next heartbeat (the
        join may have run)."""
        meta = encode_json(dict(metadata)) if metadata is not None else ""
        self.vacated.discard(channel)
        await self.changes.submit(
            Change("j", channel, connection_id, notify, meta, user_id, directory)
        )

    async def unregister(
        self,
        channel: str,
        connection_id: str,
        *,
        notify: bool,
        user_id: str | None = None,
        directory: bool = True,
    ) -> None:
        """Remove a connection (with ``directory``, its directory entries too) and announce
        it, in the next batch; if Redis does not answer, the next heartbeat reconciles the
        channel."""
        try:
            await self.changes.submit(
                Change("l", channel, connection_id, notify, "", user_id, directory)
            )
        except PresenceError as exc:
            # Said once for its whole batch; reconciled at the next heartbeat.
            logger.debug("leave of %s not recorded yet (%s)", connection_id, exc)

    async def record_channel(self, channel: str) -> None:
        """Note, under this instance's own key, that it holds sockets in ``channel``, so
        that a peer can find them if this worker dies."""
        await self._client.sadd(self._keys.worker_channels(self.instance), channel)
        self.recorded_channels.add(channel)

    def vacate(self, channel: str) -> None:
        """This worker holds no socket in ``channel`` any more: reconciled at the next
        heartbeat (what a failed leave left behind goes), then dropped from its record."""
        self.vacated.add(channel)
