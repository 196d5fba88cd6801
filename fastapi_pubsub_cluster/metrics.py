"""Metrics the core and backends report; Prometheus through the optional ``[metrics]`` extra.

The core calls a :class:`Metrics` at most once per broadcast per worker (never per
client), so recording costs nothing that grows with the number of sockets.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

#: prometheus_client's multiprocess mode is on when this directory is set (before import).
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Does nothing: the default. Subclass it to send the figures elsewhere."""

    def bind(self, local_connections: Callable[[], int], local_channels: Callable[[], int]) -> None:
        """Give the metrics live views of this worker's connections and channels."""

    def refresh(self) -> None:
        """Bring figures that are written rather than read up to date (call periodically)."""

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

    def loop_restarted(self, loop: str) -> None:
        """A background loop (``loop`` names it) failed unexpectedly and was restarted."""

    def encoding_failed(self) -> None:
        """A frame could not be encoded in some client's wire format (e.g. an integer
        msgpack cannot carry): those clients missed it, the others got it."""

    def inbound_limited(self) -> None:
        """A client message went over its inbound message or byte rate (the client closed,
        the message dropped, or the read delayed)."""

    def inbound_refused(self) -> None:
        """A handshake was refused: its address is cooling down after flooding."""

    def admission_waited(self) -> None:
        """A join waited for room in the full admission queue (joins waiting for Redis)."""

    def connection_opened(self, path: str) -> None:
        """A socket joined; ``path`` is how broadcasts reach it: ``direct`` (the direct-write
        protocol writes ready frames) or ``asgi``."""


class PrometheusMetrics(Metrics):
    """Prometheus metrics (needs ``pip install fastapi-pubsub-cluster[metrics]``).

    ::

        metrics = PrometheusMetrics()
        hub = PubSubHub(metrics=metrics)
        app = FastAPI(lifespan=hub.lifespan)
        app.mount("/metrics", metrics.asgi_app())

    With several worker processes (uvicorn ``--workers``, gunicorn), ``/metrics`` answers
    from whichever worker the scrape reaches, with that worker's figures only. Set
    ``PROMETHEUS_MULTIPROC_DIR`` to an empty, writable directory before the workers start
    and every worker writes its figures there; ``asgi_app()`` then serves the sum over the
    live workers from any of them (connections and channels summed over live workers;
    under gunicorn, call ``prometheus_client.multiprocess.mark_process_dead(worker.pid)``
    in ``child_exit``, as ``examples/gunicorn.conf.py`` does).
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, namespace: str = "pubsub"
    ) -> None:
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        self.registry = registry if registry is not None else REGISTRY
        #: True under prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``).
        self.multiprocess = multiprocess_mode()
        self._views: tuple[Callable[[], int], Callable[[], int]] | None = None
        options: dict[str, Any] = {"namespace": namespace, "registry": self.registry}
        # "livesum": the cluster-wide figure is the sum over the workers still running.
        gauge_options: dict[str, Any] = {**options, "multiprocess_mode": "livesum"}
        self._connections = Gauge("connections", "WebSockets held by this worker", **gauge_options)
        self._channels = Gauge("channels", "Channels with sockets on this worker", **gauge_options)
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
        self._restarts = Counter(
            "loop_restarts",
            "Background loops restarted after an unexpected failure",
            ["loop"],
            **options,
        )
        self._paths = Counter(
            "connections_opened",
            "Sockets that joined, by the path broadcasts take to them (direct or asgi)",
            ["path"],
            **options,
        )
        self._encoding_failures = Counter(
            "encoding_failures",
            "Frames some clients missed: their wire format could not carry the payload",
            **options,
        )
        self._inbound_limited = Counter(
            "inbound_limited", "Client messages over the inbound rate limits", **options
        )
        self._inbound_refused = Counter(
            "inbound_refused",
            "Handshakes refused during an address's cool-down after flooding",
            **options,
        )
        self._admission_waits = Counter(
            "admission_waits",
            "Joins that waited for room in the full admission queue",
            **options,
        )
        self._latency = Histogram(
            "publish_to_deliver_seconds",
            "From publish (publisher's clock) to hand-off to this worker's sockets",
            buckets=LATENCY_BUCKETS,
            **options,
        )

    def bind(self, local_connections: Callable[[], int], local_channels: Callable[[], int]) -> None:
        if not self.multiprocess:
            self._connections.set_function(local_connections)
            self._channels.set_function(local_channels)
            return
        # A function gauge is read in the process that serves the scrape, which is not the
        # one holding the sockets: write the figures to this worker's file instead, now and
        # at every event recorded here.
        self._views = (local_connections, local_channels)
        self.refresh()

    def refresh(self) -> None:
        """Write the bound connection and channel counts (multiprocess mode; else no-op).

        Called on every recorded event; a periodic caller (a heartbeat) keeps the figures of
        a quiet worker current too.
        """
        if self._views is not None:
            self._connections.set(self._views[0]())
            self._channels.set(self._views[1]())

    def published(self) -> None:
        self._published.inc()
        self.refresh()

    def delivered(self, clients: int, sent_at: float) -> None:
        self.refresh()
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

    def loop_restarted(self, loop: str) -> None:
        self._restarts.labels(loop=loop).inc()

    def encoding_failed(self) -> None:
        self._encoding_failures.inc()

    def inbound_limited(self) -> None:
        self._inbound_limited.inc()

    def connection_opened(self, path: str) -> None:
        self._paths.labels(path=path).inc()

    def inbound_refused(self) -> None:
        self._inbound_refused.inc()

    def admission_waited(self) -> None:
        self._admission_waits.inc()

    def asgi_app(self) -> Any:
        """An ASGI app serving these metrics in the Prometheus text format; in multiprocess
        mode, the figures of every live worker (summed) from whichever worker answers."""
        from prometheus_client import CollectorRegistry, make_asgi_app

        if not self.multiprocess:
            return make_asgi_app(registry=self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return make_asgi_app(registry=registry)


def multiprocess_mode() -> bool:
    """True if prometheus_client runs in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``)."""
    return bool(os.environ.get(MULTIPROC_DIR_ENV) or os.environ.get(MULTIPROC_DIR_ENV.lower()))
