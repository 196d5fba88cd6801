"""Removing the presence of worker instances that died (or that a worker left behind)."""

from __future__ import annotations

import logging
from collections.abc import Collection

from . import scripts
from .clients import CommandClient, text
from .directory import Directory
from .keys import RedisKeys

logger = logging.getLogger("fastapi_pubsub_cluster")


class Reaper:
    """Claims a dead worker instance (atomically, so that one live worker does) and removes
    every entry it owned, announcing each leave: in its channels, then in the directory."""

    def __init__(
        self,
        client: CommandClient,
        keys: RedisKeys,
        *,
        publish_command: str,
        directory: Directory,
    ) -> None:
        self._client = client
        self._keys = keys
        self._publish_command = publish_command
        self._directory = directory
        self._claim = client.register_script(scripts.CLAIM)
        self._reap_channel = client.register_script(scripts.REAP_CHANNEL)

    async def instances_of(self, worker_id: str) -> list[str]:
        """The instances of ``worker_id`` that the cluster lists."""
        workers = [text(w) for w in await self._client.smembers(self._keys.workers)]
        return [w for w in workers if w.startswith(f"{worker_id}#")]

    async def reap_dead(self, own: str, *, spare: Collection[str]) -> None:
        """Reap every instance but ``own`` and ``spare`` whose heartbeat expired."""
        client = self._client
        workers = [text(w) for w in await client.smembers(self._keys.workers)]
        others = [w for w in workers if w != own and w not in spare]
        if not others:
            return
        async with client.pipeline(transaction=False) as pipe:
            for worker in others:
                pipe.exists(self._keys.heartbeat(worker))
            alive = await pipe.execute()
        for worker, is_alive in zip(others, alive, strict=True):
            if not is_alive:
                removed = await self.reap(worker, by=own)
                if removed >= 0:
                    logger.warning("reaped %d connections of dead worker %s", removed, worker)

    async def reap(self, instance: str, *, by: str, force: bool = False) -> int:
        """Remove what ``instance`` registered, in every channel it held and in the
        directory, announced as ``by``; -1 if it turned out alive (unless ``force``).

        The claim is atomic on the instance's own slot; the per-channel removals are not
        (they live on other slots), and remove only entries the claimed instance owns.
        """
        keys = self._keys
        channels = await self._claim(
            keys=[keys.heartbeat(instance), keys.worker_channels(instance)],
            args=["1" if force else "0"],
        )
        if channels is None:
            return -1
        removed = 0
        for raw in channels:
            channel = text(raw)
            removed += int(
                await self._reap_channel(
                    keys=keys.presence(channel),
                    args=[
                        self._publish_command,
                        keys.topic(channel),
                        channel,
                        by,
                        instance,
                        scripts.SEQ_IDLE_TTL_MS,
                    ],
                )
            )
        await self._directory.reap(instance)
        await self._client.srem(keys.workers, instance)
        return removed
