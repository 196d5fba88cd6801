"""Names of the Redis keys and pub/sub topics, in one place (the publisher shares them).

Every key of a channel carries the channel id as a hash tag (``{<id>}``), so that on a
Redis Cluster they all live on one shard, with the channel's sharded pub/sub topic: the
scripts that change presence and announce it then touch a single slot.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """Key layout under one prefix.

    ``<prefix>:{<id>}:members``   set of connection ids in a channel (cluster-wide presence)
    ``<prefix>:{<id>}:owners``    hash connection id -> worker id, for reaping dead workers
    ``<prefix>:{<id>}:meta``      hash connection id -> presence metadata (JSON), if any
    ``<prefix>:{<id>}:seq``       counter of the channel's membership events
    ``<prefix>:{<id>}:topic``     (sharded) pub/sub topic carrying the channel's envelopes
    ``<prefix>:{<id>}:history``   stream of the channel's messages, if it keeps history
    ``<prefix>:{<id>}:stored``    ids of the publications stored lately (no double store)
    ``<prefix>:settings``         what the workers announce (history) for outside publishers
    ``<prefix>:workers``          set of worker instances that hold presence
    ``<prefix>:worker:{<w>}:alive``     heartbeat of worker instance ``w``, with a TTL
    ``<prefix>:worker:{<w>}:channels``  channels instance ``w`` has held sockets in
    ``<prefix>:worker:{<w>}:inbox``     (sharded) topic of worker ``w``'s targeted sends
    ``<prefix>:worker:{<w>}:connections``  hash connection id -> "<instance> <user id>"
                                  for every connection worker ``w`` holds
    ``<prefix>:user:{<u>}:connections``  set of the ids of user ``u``'s connections

    (``w`` is a worker instance, its id and epoch, for the heartbeat and the channels; the
    worker id alone for its inbox and connections, which a connection id starts with.)
    """

    prefix: str

    def _channel_key(self, channel: str, kind: str) -> str:
        return f"{self.prefix}:{{{channel}}}:{kind}"

    def members(self, channel: str) -> str:
        return self._channel_key(channel, "members")

    def owners(self, channel: str) -> str:
        return self._channel_key(channel, "owners")

    def meta(self, channel: str) -> str:
        return self._channel_key(channel, "meta")

    def seq(self, channel: str) -> str:
        return self._channel_key(channel, "seq")

    def topic(self, channel: str) -> str:
        return self._channel_key(channel, "topic")

    def presence(self, channel: str) -> list[str]:
        """The KEYS of every membership script: members, seq, owners, metadata."""
        return [self.members(channel), self.seq(channel), self.owners(channel), self.meta(channel)]

    def history(self, channel: str) -> str:
        return self._channel_key(channel, "history")

    def stored_ids(self, channel: str) -> str:
        return self._channel_key(channel, "stored")

    @property
    def settings(self) -> str:
        return f"{self.prefix}:settings"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def heartbeat(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{{{worker_id}}}:alive"

    def worker_channels(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{{{worker_id}}}:channels"

    def inbox(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{{{worker_id}}}:inbox"

    def worker_connections(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{{{worker_id}}}:connections"

    def user_connections(self, user_id: str) -> str:
        return f"{self.prefix}:user:{{{user_id}}}:connections"

    def probe_topic(self, worker_id: str, tag: str) -> str:
        """A topic for a worker's link probes; ``tag`` picks its slot (and so its shard)."""
        return f"{self.prefix}:probe:{{{tag}}}:{worker_id}"
