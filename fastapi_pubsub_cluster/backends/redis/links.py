"""This worker's pub/sub links: one per Redis server (per shard on a cluster), and which
one carries each channel."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from ...errors import BackendUnavailableError
from ...metrics import Metrics
from ...settings import PubSubSettings
from ...tasks import TaskSupervisor
from .clients import CommandClient, RedisEndpoint
from .keys import RedisKeys
from .link import TopicLink

MAIN_LINK = "main"


class Links:
    """Opens links on demand and routes each channel's topic to the link that serves it."""

    def __init__(
        self,
        endpoint: RedisEndpoint,
        client: CommandClient,
        keys: RedisKeys,
        settings: PubSubSettings,
        *,
        worker_id: str,
        tasks: TaskSupervisor,
        metrics: Metrics,
        on_message: Callable[[str, bytes], None],
        on_restored: Callable[[TopicLink], Awaitable[None]],
    ) -> None:
        self._endpoint = endpoint
        self._client = client
        self._keys = keys
        self._settings = settings
        self._worker_id = worker_id
        self._tasks = tasks
        self._metrics = metrics
        self._on_message = on_message
        self._on_restored = on_restored
        self._links: dict[str, TopicLink] = {}
        self._channel_links: dict[str, TopicLink] = {}

    @property
    def count(self) -> int:
        """Pub/sub connections open (one per Redis server serving this worker's channels)."""
        return len(self._links)

    @property
    def reconnect_count(self) -> int:
        """Times a link was re-established after a loss."""
        return sum(link.reconnect_count for link in self._links.values())

    @property
    def deaf_count(self) -> int:
        """Times a probe found a link connected but not receiving."""
        return sum(link.deaf_count for link in self._links.values())

    def subscribed_channels(self) -> list[str]:
        """Channels whose topic a link is subscribed to."""
        return list(self._channel_links)

    def is_subscribed(self, channel: str) -> bool:
        """True while a link carries ``channel``."""
        return channel in self._channel_links

    def channels_on(self, link: TopicLink) -> list[str]:
        """The channels ``link`` carries."""
        return [channel for channel, owner in self._channel_links.items() if owner is link]

    async def open_main(self) -> None:
        """Open the single link of a non-cluster Redis; raises if Redis cannot be reached."""
        endpoint = self._endpoint
        await self._open(MAIN_LINK, endpoint.link_client, self._worker_id)

    async def subscribe_topic(self, topic: str) -> None:
        """Subscribe the link that serves ``topic`` (not a channel's: a worker's inbox) for
        as long as the links are open; it is subscribed again after each reconnect."""
        link = await self._link_for(topic)
        await link.subscribe(topic)

    async def subscribe(self, channel: str) -> None:
        """Subscribe the serving link to ``channel``'s topic."""
        link = await self._link_for(self._keys.topic(channel))
        self._channel_links[channel] = link
        try:
            await link.subscribe(self._keys.topic(channel))
        except BaseException:
            self._channel_links.pop(channel, None)
            raise

    async def unsubscribe(self, channel: str) -> None:
        """Stop hearing ``channel``."""
        link = self._channel_links.pop(channel, None)
        if link is not None:
            await link.unsubscribe(self._keys.topic(channel))

    async def close(self) -> None:
        """Close every link."""
        links, self._links = list(self._links.values()), {}
        self._channel_links.clear()
        for link in links:
            await link.close()

    async def _open(self, name: str, connect: Callable[[], Redis], probe_tag: str) -> TopicLink:
        link = TopicLink(
            name=name,
            connect=connect,
            sharded=self._endpoint.is_cluster,
            probe_topic=self._keys.probe_topic(self._worker_id, probe_tag),
            publish=lambda topic, data: self._endpoint.publish_raw(self._client, topic, data),
            on_message=self._on_message,
            on_restored=self._restored,
            settings=self._settings,
            tasks=self._tasks,
            metrics=self._metrics,
        )
        await link.open()
        self._links[name] = link
        link.start()
        return link

    async def _restored(self, link: TopicLink) -> None:
        # A link reconnects to the primary the Sentinel names now: the commands (its
        # probes among them) move there too before presence is registered again.
        await self._endpoint.rediscover_primary()
        await self._on_restored(link)

    async def _link_for(self, topic: str) -> TopicLink:
        """The link that carries ``topic`` (on a cluster: its shard's)."""
        client = self._client
        if not isinstance(client, RedisCluster):
            return self._links[MAIN_LINK]
        node = client.get_node_from_key(topic)
        if node is None:
            raise BackendUnavailableError(f"no cluster node serves topic {topic!r}")
        link = self._links.get(node.name)
        if link is not None:
            return link
        tag = self._probe_tag_on(client, node.name)
        probe_key = self._keys.probe_topic(self._worker_id, tag)
        endpoint = self._endpoint

        def connect() -> Redis:
            # Whoever serves the probe's slot now: after a failover, the promoted replica.
            owner = client.get_node_from_key(probe_key) or node
            return endpoint.node_link_client(owner.host, int(owner.port))

        return await self._open(node.name, connect, tag)

    def _probe_tag_on(self, client: RedisCluster, node_name: str) -> str:
        """A hash tag whose slot the node serves, so that its probes travel its link."""
        for attempt in range(100_000):
            tag = f"{self._worker_id}-{attempt}"
            node = client.get_node_from_key(self._keys.probe_topic(self._worker_id, tag))
            if node is not None and node.name == node_name:
                return tag
        raise BackendUnavailableError(f"cluster node {node_name} serves no slot")
