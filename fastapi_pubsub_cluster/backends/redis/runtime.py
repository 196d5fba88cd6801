"""A started Redis backend's parts: its connections, its presence, its pub/sub links, its
publish path and the stores' reads, built afresh at each start."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ...core.backend import FanOutSink
from ...metrics import Metrics
from ...settings import PubSubSettings
from ...tasks import TaskSupervisor
from .clients import CommandClient, PresenceClients, RedisEndpoint
from .history_store import ResumePoints
from .keys import RedisKeys
from .link import TopicLink
from .links import Links
from .presence import Presence
from .presence_store import ChannelReads
from .publishing import PublishPath
from .upkeep import PresenceUpkeep

# Redis connections one worker may hold for commands (per shard on a cluster), besides its
# pub/sub link (one per Redis server that holds any of its channels) and, on one Redis, its
# publish path's own connection (see PublishConnection).
MAX_REDIS_CONNECTIONS = 8


@dataclass(frozen=True, slots=True)
class RedisRuntime:
    """The connections and workers of a started Redis backend."""

    endpoint: RedisEndpoint
    client: CommandClient
    presence: Presence
    upkeep: PresenceUpkeep
    publisher: PublishPath
    links: Links
    sink: FanOutSink
    resume_points: ResumePoints
    reads: ChannelReads


def build_runtime(
    url: str,
    sink: FanOutSink,
    keys: RedisKeys,
    settings: PubSubSettings,
    *,
    worker_id: str,
    tasks: TaskSupervisor,
    metrics: Metrics,
    on_message: Callable[[str, bytes], None],
    on_restored: Callable[[TopicLink], Awaitable[None]],
) -> RedisRuntime:
    """The parts of a run, not connected yet (the backend connects them)."""
    endpoint = RedisEndpoint(url, settings, client_name=f"{keys.prefix}:{worker_id}")
    client = endpoint.command_client(MAX_REDIS_CONNECTIONS)
    clients = PresenceClients(
        commands=client,
        heartbeat=endpoint.command_client(2),
        writes=endpoint.command_client(1, retries=0),
        answers=endpoint.answers,
        target=endpoint.safe_url,
    )
    presence = Presence(
        clients,
        keys,
        settings,
        worker_id=worker_id,
        publish_command=endpoint.publish_command,
        metrics=metrics,
        local=sink,
    )
    upkeep = PresenceUpkeep(
        presence,
        clients,
        keys,
        settings,
        publish_command=endpoint.publish_command,
        metrics=metrics,
        local=sink,
    )
    links = Links(
        endpoint,
        client,
        keys,
        settings,
        worker_id=worker_id,
        tasks=tasks,
        metrics=metrics,
        on_message=on_message,
        on_restored=on_restored,
    )
    publisher = PublishPath(endpoint, client, settings, origin=worker_id)
    return RedisRuntime(
        endpoint,
        client,
        presence,
        upkeep,
        publisher,
        links,
        sink,
        ResumePoints(client, settings),
        ChannelReads(client, keys),
    )
