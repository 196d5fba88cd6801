"""The settings every party of a cluster must share, announced in Redis by the workers.

Whether a channel keeps history decides how a message is published (stored, with an id,
or not): an outside publisher must decide as the workers do, so it reads what they
announced rather than trusting its own environment, unless it sets ``history_channels``
itself. A worker announces when it starts and, should Redis lose the announcement (a
restart without persistence, a flush, an eviction), again at its next heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline

from ...errors import ConfigurationError, SettingsNotAnnouncedError
from ...settings import PubSubSettings
from .clients import CommandClient, text
from .keys import RedisKeys

logger = logging.getLogger("fastapi_pubsub_cluster")

SHARED_FIELDS = ("history_channels", "history_size", "history_ttl")


def shared_values(settings: PubSubSettings) -> dict[str, str]:
    """The shared settings of ``settings`` as Redis stores them."""
    return {name: str(getattr(settings, name)) for name in SHARED_FIELDS}


async def announce(client: CommandClient, keys: RedisKeys, settings: PubSubSettings) -> None:
    """Write this worker's shared settings; warn if the cluster announced others before."""
    ours = shared_values(settings)
    before = {text(k): text(v) for k, v in (await client.hgetall(keys.settings)).items()}
    differing = {k: (before[k], v) for k, v in ours.items() if k in before and before[k] != v}
    if differing:
        logger.warning(
            "this worker's settings differ from what other workers announced (was, now): %s; "
            "every worker of a cluster needs the same ones",
            differing,
        )
    await client.hset(keys.settings, mapping=dict[Any, Any](ours))


def restore(pipe: Pipeline | ClusterPipeline, keys: RedisKeys, settings: PubSubSettings) -> None:
    """Queue on ``pipe`` the announcement of each shared setting that Redis lacks (one reply
    each, 1 where it was missing). Idempotent; leaves what a worker announced alone, so
    that workers configured apart do not overwrite each other every heartbeat."""
    for name, value in shared_values(settings).items():
        pipe.hsetnx(keys.settings, name, value)


#: How often a publisher waiting for the announcement reads it again, in seconds.
POLL_INTERVAL = 0.1


async def adopt(
    client: CommandClient, keys: RedisKeys, settings: PubSubSettings, *, where: str
) -> PubSubSettings:
    """``settings`` with the shared fields the workers announced (in the Redis at ``where``,
    a redacted URL for messages).

    A ``history_channels`` that ``settings`` sets itself (even empty: no history) must
    agree with the announcement, else :class:`ConfigurationError`; without an announcement
    it is used as is. One left unset adopts the workers': when nothing is announced, it
    waits up to ``heartbeat_ttl`` while a worker may yet announce (one runs, or Redis
    restarted within that time), and raises :class:`SettingsNotAnnouncedError` if none
    did; where no worker runs, nobody can receive the message and it is published without
    history.
    """
    explicit = "history_channels" in settings.model_fields_set
    raw = await _announced(client, keys)
    if raw is None and not explicit:
        deadline = time.monotonic() + settings.heartbeat_ttl
        while raw is None and time.monotonic() < deadline:
            if not await _worker_runs(client, keys) and not await _restarted_within(
                client, settings.heartbeat_ttl
            ):
                break
            await asyncio.sleep(POLL_INTERVAL)
            raw = await _announced(client, keys)
        if raw is None and await _worker_runs(client, keys):
            raise SettingsNotAnnouncedError(
                f"workers run under the key prefix {keys.prefix!r} at {where}, but none "
                f"announced its settings ({keys.settings!r}) within {settings.heartbeat_ttl}s "
                "(PUBSUB_HEARTBEAT_TTL), so this process cannot tell which channels keep "
                "history. Run every worker with this version of fastapi-pubsub-cluster, or "
                "set PUBSUB_HISTORY_CHANNELS here to the workers' value "
                "(PUBSUB_HISTORY_CHANNELS= with nothing after it where they keep none)"
            )
        if raw is None:
            logger.info(
                "no worker runs under %r at %s: publishing without history", keys.prefix, where
            )
            return settings
    if raw is None:
        return settings
    cluster_history = raw["history_channels"]
    if explicit and settings.history_channels != cluster_history:
        raise ConfigurationError(
            f"PUBSUB_HISTORY_CHANNELS={settings.history_channels!r} here, but the workers at "
            f"{where} keep history for {cluster_history!r}: set the same value, or leave it "
            "unset to adopt the workers' value"
        )
    return settings.with_changes(
        history_channels=cluster_history,
        history_size=int(raw["history_size"]),
        history_ttl=float(raw["history_ttl"]),
    )


async def _announced(client: CommandClient, keys: RedisKeys) -> dict[str, str] | None:
    raw = {text(k): text(v) for k, v in (await client.hgetall(keys.settings)).items()}
    return raw if all(name in raw for name in SHARED_FIELDS) else None


async def _worker_runs(client: CommandClient, keys: RedisKeys) -> bool:
    """True if a worker instance under ``keys`` has a live heartbeat."""
    for instance in [text(member) for member in await client.smembers(keys.workers)]:
        if await client.exists(keys.heartbeat(instance)):
            return True
    return False


async def _restarted_within(client: CommandClient, seconds: float) -> bool:
    """True if Redis (a node of it) restarted less than ``seconds`` ago: the workers'
    heartbeats were lost with the announcement and come back at their next beat."""
    info: dict[str, Any] = await client.info("server")
    nodes = [info] if "uptime_in_seconds" in info else list(info.values())
    return any(
        isinstance(node, dict) and float(node.get("uptime_in_seconds", 0)) < seconds
        for node in nodes
    )
