"""One batch of joins and leaves, written in one round trip."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from ...core.backend import FanOutSink
from ...frames import encode_json
from . import scripts
from .clients import CommandClient
from .directory import Directory
from .gate import ChannelGate
from .keys import RedisKeys
from .writes import Change


class ChangeWriter:
    """Writes a batch of changes: per channel one CHANGES script (membership, metadata,
    owners, and on a single Redis the directory entries, announced as one membership
    batch), the worker's channel record for the channels joined, and on a cluster the
    directory entries beside them. Holds the channels and the directory in the gate, so
    that no reconciliation reads the local truth while the batch changes Redis."""

    def __init__(
        self,
        client: CommandClient,
        keys: RedisKeys,
        *,
        worker_id: str,
        instance: Callable[[], str],
        publish_command: str,
        directory: Directory,
        gate: ChannelGate,
        recorded: Callable[[list[str]], None],
    ) -> None:
        self._client = client
        self._keys = keys
        self._worker_id = worker_id
        self._instance = instance
        self._publish_command = publish_command
        self._directory = directory
        self._gate = gate
        self._recorded = recorded
        self._script = client.register_script(scripts.CHANGES)

    async def write(self, batch: list[Change]) -> dict[str, Exception]:
        """Write ``batch``; the channels whose script Redis refused, with its error. Raises
        when the round trip failed (any of it may have run)."""
        by_channel: dict[str, list[Change]] = {}
        for change in batch:
            by_channel.setdefault(change.channel, []).append(change)
        joined = [ch for ch, changes in by_channel.items() if any(c.kind == "j" for c in changes)]
        client = self._client
        async with self._gate.changes([*by_channel, Directory.GATE_NAME]):
            instance = self._instance()
            calls = [self._call(ch, changes, instance) for ch, changes in by_channel.items()]
            if isinstance(client, RedisCluster):
                replies = await self._write_on_cluster(client, calls, batch, joined, instance)
            else:
                async with client.pipeline(transaction=False) as pipe:
                    if joined:
                        pipe.sadd(self._keys.worker_channels(instance), *joined)
                    for keys, args in calls:
                        await self._script(keys=keys, args=args, client=pipe)
                    replies = (await pipe.execute(raise_on_error=False))[1 if joined else 0 :]
        refused = {
            channel: reply
            for channel, reply in zip(by_channel, replies, strict=True)
            if isinstance(reply, Exception)
        }
        self._recorded([channel for channel in joined if channel not in refused])
        return refused

    async def _write_on_cluster(
        self,
        client: RedisCluster,
        calls: list[tuple[list[str], list[Any]]],
        batch: list[Change],
        joined: list[str],
        instance: str,
    ) -> list[Any]:
        # A channel's keys share one slot, a batch's channels do not: one script per
        # channel (each on its shard), then the records and the directory, split by slot.
        replies: list[Any] = []
        for keys, args in calls:
            try:
                replies.append(await self._script(keys=keys, args=args))
            except ResponseError as exc:
                replies.append(exc)
        async with client.pipeline(transaction=False) as pipe:
            if joined:
                pipe.sadd(self._keys.worker_channels(instance), *joined)
            for change in batch:
                if change.directory:
                    self._directory.stage(pipe, change.kind, change.connection_id, change.user_id)
            await pipe.execute()
        return replies

    def _call(
        self, channel: str, changes: list[Change], instance: str
    ) -> tuple[list[str], list[Any]]:
        keys = self._keys
        script_keys = keys.presence(channel)
        inline = self._directory.inline
        if inline:
            script_keys.append(keys.worker_connections(self._worker_id))
        args: list[Any] = [
            self._publish_command,
            keys.topic(channel),
            channel,
            instance,
            scripts.SEQ_IDLE_TTL_MS,
        ]
        user_keys: dict[str, int] = {}
        for change in changes:
            entry, user = "", 0
            if change.directory and inline:
                entry = self._directory.entry(change.user_id) if change.kind == "j" else "-"
                if change.user_id is not None:
                    key = keys.user_connections(change.user_id)
                    if key not in user_keys:
                        script_keys.append(key)
                        user_keys[key] = len(script_keys)  # Lua's KEYS count from 1
                    user = user_keys[key]
            args += [
                change.kind,
                change.connection_id,
                "1" if change.notify else "0",
                change.meta,
                entry,
                user,
            ]
        return script_keys, args


def reconcile_call(
    keys: RedisKeys, channel: str, local: FanOutSink, instance: str, publish_command: str
) -> tuple[list[str], list[Any]]:
    """The RECONCILE script's keys and arguments for ``channel``, from the local truth:
    every live connection of this worker there (with its metadata), owned by ``instance``."""
    metadata = local.local_metadata(channel)
    live_with_meta: list[str] = []
    for connection_id in local.local_members(channel):
        meta = metadata.get(connection_id)
        live_with_meta += [connection_id, encode_json(meta) if meta is not None else ""]
    worker_prefix = instance.rpartition("#")[0] + "#"
    args = [
        publish_command,
        keys.topic(channel),
        channel,
        instance,
        worker_prefix,
        scripts.SEQ_IDLE_TTL_MS,
        *live_with_meta,
    ]
    return keys.presence(channel), args
