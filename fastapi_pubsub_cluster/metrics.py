"""Metrics the managers report; Prometheus through the optional ``[metrics]`` extra.

The managers call a :class:`Metrics` at most once per broadcast per worker (never per
client), so recording costs nothing that grows with the number of sockets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Does nothing: the default. Subclass it to send the figures elsewhere."""

    def bind(self, local_connections: Callable[[], int], local_channels: Callable[[], int]) -> None:
        """Give the metrics live views of this worker's connections and channels."""

    def published(self) -> None:
        """One message was published from this worker."""

    def delivered(self, clients: int, sent_at: float) -> None:
        """One message was handed to ``clients`` local sockets; ``sent_at`` is the
        publisher's clock (0 when unknown)."""

    def dropped(self) -> None:
        """A slow client lost its oldest queued message (``drop_oldest`` policy)."""

    def slow_client_disconnected(self) -> None:
        """A slow client was disconnected (``disconnect`` policy)."""

    def redis_reconnected(self) -> None:
        """The Redis pub/sub link was re-established after a loss."""

    def deaf_link_detected(self) -> None:
        """A probe found the pub/sub link connected but not receiving."""

    def inbound_limited(self) -> None:
        """A client went over its inbound message or byte rate (closed or message dropped)."""


class PrometheusMetrics(Metrics):
    """Prometheus metrics (needs ``pip install fastapi-pubsub-cluster[metrics]``).

    ::

        metrics = PrometheusMetrics()
        hub = PubSubHub(metrics=metrics)
        app = FastAPI(lifespan=hub.lifespan)
        app.mount("/metrics", metrics.asgi_app())

    With several worker processes, each serves its own figures (or use prometheus_client's
    multiprocess mode, which needs ``PROMETHEUS_MULTIPROC_DIR``).
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, namespace: str = "pubsub"
    ) -> None:
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        self.registry = registry if registry is not None else REGISTRY
        options: dict[str, Any] = {"namespace": namespace, "registry": self.registry}
        self._connections = Gauge("connections", "WebSockets held by this worker", **options)
        self._channels = Gauge("channels", "Channels with sockets on this worker", **options)
        self._published = Counter("messages_published", "Messages published here", **options)
        self._delivered = Counter(
            "messages_delivered", "Messages handed to local sockets (one per socket)", **options
        )
        self._dropped = Counter(
            "messages_dropped", "Messages a slow client lost (drop_oldest)", **options
        )
        self._slow = Counter(
            "slow_client_disconnects", "Clients disconnected for falling behind", **options
        )
        self._reconnects = Counter("redis_reconnects", "Redis link re-established", **options)
        self._deaf = Counter("redis_deaf_links", "Pub/sub links found deaf by a probe", **options)
        self._inbound_limited = Counter(
            "inbound_limited", "Client messages over the inbound rate limits", **options
        )
        self._latency = Histogram(
            "publish_to_deliver_seconds",
            "From publish (publisher's clock) to hand-off to this worker's sockets",
            buckets=LATENCY_BUCKETS,
            **options,
        )

    def bind(self, local_connections: Callable[[], int], local_channels: Callable[[], int]) -> None:
        self._connections.set_function(local_connections)
        self._channels.set_function(local_channels)

    def published(self) -> None:
        self._published.inc()

    def delivered(self, clients: int, sent_at: float) -> None:
        if clients:
            self._delivered.inc(clients)
        if sent_at > 0:
            self._latency.observe(max(0.0, time.time() - sent_at))

    def dropped(self) -> None:
        self._dropped.inc()

    def slow_client_disconnected(self) -> None:
        self._slow.inc()

    def redis_reconnected(self) -> None:
        self._reconnects.inc()

    def deaf_link_detected(self) -> None:
        self._deaf.inc()

    def inbound_limited(self) -> None:
        self._inbound_limited.inc()

    def asgi_app(self) -> Any:
        """An ASGI app serving these metrics in the Prometheus text format."""
        from prometheus_client import make_asgi_app

        return make_asgi_app(registry=self.registry)
