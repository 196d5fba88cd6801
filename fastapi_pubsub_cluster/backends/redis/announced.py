"""The settings every party of a cluster must share, announced in Redis by the workers.

Whether a channel keeps history decides how a message is published (stored, with an id,
or not): an outside publisher must decide as the workers do, so it reads what they
announced rather than trusting its own environment, and refuses to publish when it finds
nothing to read. A worker announces at startup and, should Redis lose the announcement (a
restart without persistence, a flush, an eviction), again at its next heartbeat.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline

from ...errors import ConfigurationError, SettingsNotAnnouncedError
from ...settings import PubSubSettings
from .clients import CommandClient
from .keys import RedisKeys
from .replies import text

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


async def follow(
    client: CommandClient, keys: RedisKeys, settings: PubSubSettings
) -> PubSubSettings:
    """``settings`` with the shared fields the workers announced.

    Raises :class:`ConfigurationError` when ``settings`` sets history channels of its own
    that differ from the cluster's. Without an announcement, ``settings`` is used as is if
    it names history channels itself; else :class:`SettingsNotAnnouncedError` is raised,
    as a plain publish might be one that a channel's history should have kept.
    """
    raw = {text(k): text(v) for k, v in (await client.hgetall(keys.settings)).items()}
    if not all(name in raw for name in SHARED_FIELDS):
        if not settings.history_channels:
            raise SettingsNotAnnouncedError(
                f"the workers' settings are not announced in Redis ({keys.settings!r}): no "
                "worker runs with this key prefix, or Redis lost them and no worker has "
                "announced them again yet (it will within a heartbeat); without them this "
                "process cannot tell which channels keep history. Start a worker, or set "
                "PUBSUB_HISTORY_CHANNELS to the workers' value"
            )
        logger.warning(
            "no worker announced its settings under %r: publishing with this process's "
            "own (history_channels=%r)",
            keys.settings,
            settings.history_channels,
        )
        return settings
    cluster_history = raw["history_channels"]
    if settings.history_channels and settings.history_channels != cluster_history:
        raise ConfigurationError(
            f"PUBSUB_HISTORY_CHANNELS={settings.history_channels!r} here, but the workers keep "
            f"history for {cluster_history!r}: set the same value, or leave it unset to follow "
            "the workers"
        )
    return settings.with_changes(
        history_channels=cluster_history,
        history_size=int(raw["history_size"]),
        history_ttl=float(raw["history_ttl"]),
    )
