"""Names of the Redis keys and pub/sub topics, in one place (the publisher shares them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """Key layout under one prefix.

    ``<prefix>:channel:<id>``   set of connection ids in a channel (cluster-wide presence)
    ``<prefix>:seq:<id>``       counter of the channel's membership events
    ``<prefix>:topic:<id>``     pub/sub topic carrying the channel's envelopes
    ``<prefix>:history:<id>``   stream of the channel's messages, if it keeps history
    ``<prefix>:workers``        set of worker ids that hold presence
    ``<prefix>:worker:<w>:conns``  hash connection id -> channel, owned by worker ``w``
    ``<prefix>:worker:<w>:alive``  heartbeat of worker ``w``, with a TTL
    """

    prefix: str

    def members(self, channel: str) -> str:
        return f"{self.prefix}:channel:{channel}"

    def seq(self, channel: str) -> str:
        return f"{self.prefix}:seq:{channel}"

    def history(self, channel: str) -> str:
        return f"{self.prefix}:history:{channel}"

    def topic(self, channel: str) -> str:
        return f"{self.prefix}:topic:{channel}"

    @property
    def topic_prefix(self) -> str:
        return f"{self.prefix}:topic:"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def worker_connections(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}:conns"

    def heartbeat(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}:alive"
