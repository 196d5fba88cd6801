"""This worker's presence in Redis: its entries, its heartbeat, and reaping dead workers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from redis.commands.core import AsyncScript

from ...core.backend import FanOutSink
from ...metrics import Metrics
from ...settings import PubSubSettings
from . import scripts
from .clients import REDIS_DOWN, CommandClient
from .keys import RedisKeys

logger = logging.getLogger("fastapi_pubsub_cluster")


def text(value: bytes | str) -> str:
    """A Redis reply as text."""
    return value.decode() if isinstance(value, bytes) else value


class Presence:
    """Registers this worker's connections, keeps its heartbeat, reaps dead workers.

    Each local connection is a member of its channel's set with this worker recorded as
    its owner; the channels this worker holds sockets in are listed under its own key. A
    heartbeat key with a TTL tells live workers apart from dead ones, whose entries a
    live worker claims (atomically, so only one does) and removes, announcing each leave.
    """

    def __init__(
        self,
        client: CommandClient,
        keys: RedisKeys,
        settings: PubSubSettings,
        *,
        worker_id: str,
        publish_command: str,
        metrics: Metrics,
    ) -> None:
        self._client = client
        self._keys = keys
        self._settings = settings
        self._worker_id = worker_id
        self._publish_command = publish_command
        self._metrics = metrics
        self._join = client.register_script(scripts.JOIN)
        self._leave = client.register_script(scripts.LEAVE)
        self._reap_channel = client.register_script(scripts.REAP_CHANNEL)
        self._snapshot = client.register_script(scripts.SNAPSHOT)
        self._claim = client.register_script(scripts.CLAIM)
        self._recorded_channels: set[str] = set()
        # Leaves that failed (Redis unreachable), retried until they land.
        self._unannounced_leaves: dict[str, str] = {}

    # -- entries -----------------------------------------------------------------------

    async def register(self, channel: str, connection_id: str, *, notify: bool) -> None:
        """Add a connection to its channel and announce it (once)."""
        await self._membership_script(self._join, channel, connection_id, notify)

    async def unregister(self, channel: str, connection_id: str, *, notify: bool) -> None:
        """Remove a connection and announce it; if Redis does not answer, it is retried."""
        try:
            await self._membership_script(self._leave, channel, connection_id, notify)
        except REDIS_DOWN as exc:
            self._unannounced_leaves[connection_id] = channel
            logger.warning("leave of %s not recorded yet (%r); retrying later", connection_id, exc)

    async def _membership_script(
        self, script: AsyncScript, channel: str, connection_id: str, notify: bool
    ) -> None:
        keys = self._keys
        await script(
            keys=[keys.members(channel), keys.seq(channel), keys.owners(channel)],
            args=[
                self._publish_command,
                keys.topic(channel),
                channel,
                self._worker_id,
                connection_id,
                "1" if notify else "0",
                scripts.SEQ_IDLE_TTL_MS,
            ],
        )

    async def snapshot(self, channel: str) -> tuple[frozenset[str], int]:
        """The members of ``channel`` and its sequence number, read at one instant."""
        raw_members, raw_seq = await self._snapshot(
            keys=[self._keys.members(channel), self._keys.seq(channel)]
        )
        return frozenset(text(m) for m in raw_members), int(raw_seq or 0)

    async def members(self, channel: str) -> frozenset[str]:
        """Connection ids in ``channel``."""
        return frozenset(text(m) for m in await self._client.smembers(self._keys.members(channel)))

    async def record_channel(self, channel: str) -> None:
        """Note, under this worker's own key, that it holds sockets in ``channel``, so that
        a peer can find them if this worker dies."""
        await self._client.sadd(self._keys.worker_channels(self._worker_id), channel)
        self._recorded_channels.add(channel)

    async def forget_channel(self, channel: str) -> None:
        """This worker holds no socket in ``channel`` any more."""
        self._recorded_channels.discard(channel)
        await self._client.srem(self._keys.worker_channels(self._worker_id), channel)

    async def register_again(self, local: FanOutSink, channels: list[str]) -> None:
        """(Re-)register the local connections of ``channels``; retry leaves that failed."""
        for connection_id, channel in list(self._unannounced_leaves.items()):
            await self._membership_script(self._leave, channel, connection_id, True)
            self._unannounced_leaves.pop(connection_id, None)
        for channel in channels:
            await self.record_channel(channel)
            for connection_id in list(local.local_members(channel)):
                await self.register(channel, connection_id, notify=True)

    # -- heartbeat and reaping ---------------------------------------------------------

    async def beat(self) -> bool:
        """Renew the heartbeat; True if this worker's presence may have been lost meanwhile
        (its heartbeat had expired, or a peer claimed its channel record)."""
        ttl_ms = int(self._settings.heartbeat_ttl * 1000)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.set(self._keys.heartbeat(self._worker_id), "1", px=ttl_ms, get=True)
            pipe.sadd(self._keys.workers, self._worker_id)
            pipe.exists(self._keys.worker_channels(self._worker_id))
            previous, _, recorded = await pipe.execute()
        return previous is None or bool(self._recorded_channels and not recorded)

    async def reap_dead_workers(self) -> None:
        """Remove the presence of every worker whose heartbeat expired."""
        client = self._client
        workers = [text(w) for w in await client.smembers(self._keys.workers)]
        others = [w for w in workers if w != self._worker_id]
        if not others:
            return
        async with client.pipeline(transaction=False) as pipe:
            for worker in others:
                pipe.exists(self._keys.heartbeat(worker))
            alive = await pipe.execute()
        for worker, is_alive in zip(others, alive, strict=True):
            if not is_alive:
                removed = await self.reap(worker)
                if removed >= 0:
                    logger.warning("reaped %d connections of dead worker %s", removed, worker)

    async def reap(self, worker_id: str, *, force: bool = False) -> int:
        """Remove a worker's presence from every channel it held; -1 if it turned out alive
        (``force`` removes it all the same: a worker's own shutdown).

        The claim is atomic on the worker's own slot, the per-channel removals are not (they
        live on other slots). A worker that was only stalled finds its channel record gone
        at its next heartbeat and registers again.
        """
        keys = self._keys
        channels = await self._claim(
            keys=[keys.heartbeat(worker_id), keys.worker_channels(worker_id)],
            args=["1" if force else "0"],
        )
        if channels is None:
            return -1
        removed = 0
        for raw in channels:
            channel = text(raw)
            removed += int(
                await self._reap_channel(
                    keys=[keys.members(channel), keys.seq(channel), keys.owners(channel)],
                    args=[
                        self._publish_command,
                        keys.topic(channel),
                        channel,
                        self._worker_id,
                        worker_id,
                        scripts.SEQ_IDLE_TTL_MS,
                    ],
                )
            )
        await self._client.srem(keys.workers, worker_id)
        return removed

    async def forget_unannounced(self) -> None:
        """Drop pending leave retries (this worker's whole presence was removed)."""
        self._unannounced_leaves.clear()

    async def maintain_forever(self, repair: Callable[[], Awaitable[None]]) -> None:
        """Beat and reap every third of the TTL; ``repair()`` when presence was lost.

        Supervised: any failure is logged and counted, and the loop goes on.
        """
        interval = self._settings.heartbeat_ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                if await self.beat():
                    await repair()
                await self.reap_dead_workers()
            except REDIS_DOWN as exc:
                logger.warning("heartbeat failed (%r); retrying in %.1fs", exc, interval)
            except Exception:
                logger.exception("presence maintenance failed; going on")
                self._metrics.loop_restarted("presence")
