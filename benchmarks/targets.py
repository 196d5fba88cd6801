"""The systems under test: ours (in memory, Redis with 1/2/4 workers), ceilings and peers;
and, for their own scenarios, ours on a Redis Cluster and ours with history."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import quote


class Role(StrEnum):
    OURS = "ours"
    CEILING = "ceiling"
    PEER = "peer"


class Protocol(StrEnum):
    """How a light client talks to the server."""

    PLAIN = "plain"  # frames are the payload (or contain it)
    ENGINEIO = "engineio"  # socket.io over a plain websocket
    PERMIT_RPC = "permit-rpc"  # fastapi_websocket_rpc JSON-RPC


class PublishVia(StrEnum):
    """How the driver publishes into the system, as its users would from outside a socket."""

    OURS_REDIS = "fastapi_pubsub_cluster.RedisPublisher"
    RAW_REDIS = "redis-py PUBLISH of the JSON payload"
    SOCKETIO_REDIS = "socketio.AsyncRedisManager(write_only=True).emit"
    #: The command ``Broadcast.publish`` sends, from the driver: broadcaster is installed only
    #: in its peer venv (the publish scenario runs ``Broadcast.publish`` itself there).
    BROADCASTER_REDIS = "redis-py PUBLISH, as broadcaster.Broadcast.publish sends it"
    CONTROL_SOCKET = "control websocket into the app"


@dataclass(frozen=True)
class Target:
    """One system as a server command, a client protocol and a way to publish."""

    name: str
    role: Role
    description: str
    #: ``uvicorn`` app path, or ``None`` for a module run with ``python -m``.
    asgi_app: str | None
    module: str | None = None
    workers: int = 1
    uses_redis: bool = False
    #: Runs against the benchmark's Redis Cluster (``redis+cluster://``) instead of one Redis.
    uses_cluster: bool = False
    #: Its channels keep history (``PUBSUB_HISTORY_CHANNELS``, see ``HISTORY_CHANNELS``).
    history: bool = False
    protocol: Protocol = Protocol.PLAIN
    publish_via: PublishVia = PublishVia.CONTROL_SOCKET
    #: Workarounds applied so the system works at all under the workload (printed).
    workarounds: tuple[str, ...] = field(default=())
    #: uvicorn ``--ws`` protocol (import string), or None for uvicorn's default.
    ws_protocol: str | None = None
    #: Extra environment of the server (e.g. ``PUBSUB_COMPRESSION``).
    env: tuple[tuple[str, str], ...] = ()
    #: Extra arguments of a ``module`` server.
    module_args: tuple[str, ...] = ()
    #: The peer venv (``benchmarks.peer_venvs``) whose python runs the server, or None for
    #: the driver's own environment.
    venv: str | None = None
    #: The path plain clients connect to, before the channel (``/count``: ours with the
    #: README's original count hook, ``benchmarks.apps.ours``).
    ws_path: str = "/ws"
    #: Every client receives the channel's cluster-wide count after each join and leave.
    count_hook: bool = False

    def client_url(self, port: int, channel: str) -> str:
        """Where a client of ``channel`` connects."""
        base = f"ws://127.0.0.1:{port}"
        if self.protocol is Protocol.ENGINEIO:
            return f"{base}/socket.io/?EIO=4&transport=websocket&channel={quote(channel)}"
        if self.protocol is Protocol.PERMIT_RPC:
            return f"{base}/pubsub"
        return f"{base}{self.ws_path}/{quote(channel)}"


BROADCASTER_WORKAROUNDS = (
    "Broadcast.subscribe() entered under one asyncio.Lock in the app: sockets joining a channel "
    "concurrently race (check 'anyone subscribed?', await SUBSCRIBE, then assign the set) and "
    "all but the last never receive.",
    "the Redis backend's private _ready event set again after each subscribe(): it is set "
    "before SUBSCRIBE is awaited, the listener wakes in between, PubSub.listen() returns at once "
    "(nothing subscribed yet), the listener clears _ready and never runs again, so no socket "
    "receives anything (even one subscriber in a fresh process).",
)

OURS_MEMORY = Target("ours-memory", Role.OURS, "fastapi-pubsub-cluster, in memory", "ours")
OURS_REDIS = tuple(
    Target(
        f"ours-redis-{workers}w",
        Role.OURS,
        f"fastapi-pubsub-cluster, Redis, {workers} uvicorn worker(s)",
        "ours",
        workers=workers,
        uses_redis=True,
        publish_via=PublishVia.OURS_REDIS,
    )
    for workers in (1, 2, 4)
)
OURS_DIRECT = Target(
    "ours-redis-2w-direct",
    Role.OURS,
    "fastapi-pubsub-cluster, Redis, 2 uvicorn workers, --ws PubSubWebSocketProtocol "
    "(broadcast framed once, written straight to each socket; compression shared)",
    "ours",
    workers=2,
    uses_redis=True,
    publish_via=PublishVia.OURS_REDIS,
    ws_protocol="fastapi_pubsub_cluster.servers.uvicorn_ws:PubSubWebSocketProtocol",
)
DIRECT_PROTOCOL = "fastapi_pubsub_cluster.servers.uvicorn_ws:PubSubWebSocketProtocol"
OURS_DIRECT_POLICIES = tuple(
    Target(
        f"ours-redis-2w-direct-{policy}",
        Role.OURS,
        f"fastapi-pubsub-cluster, Redis, 2 workers, --ws PubSubWebSocketProtocol, "
        f"PUBSUB_COMPRESSION={policy}",
        "ours",
        workers=2,
        uses_redis=True,
        publish_via=PublishVia.OURS_REDIS,
        ws_protocol=DIRECT_PROTOCOL,
        env=(("PUBSUB_COMPRESSION", policy),),
    )
    for policy in ("per-socket", "off")
)
WEBSOCKETS = Target(
    "websockets",
    Role.CEILING,
    "websockets asyncio server + broadcast(), no ASGI",
    None,
    module="benchmarks.apps.websockets_server",
)
WEBSOCKETS_DEFLATE = Target(
    "websockets-deflate",
    Role.CEILING,
    "websockets asyncio server + broadcast(), permessage-deflate on (its default)",
    None,
    module="benchmarks.apps.websockets_server",
    module_args=("--compression", "deflate"),
)
REDIS_PY_LOOP = Target(
    "redis-py-loop-2w",
    Role.CEILING,
    "hand-written: 2 uvicorn workers, one redis-py pub/sub per worker, send_text per socket",
    "redis_py_loop",
    workers=2,
    uses_redis=True,
    publish_via=PublishVia.RAW_REDIS,
)
FASTAPI_LOOP = Target(
    "fastapi-loop", Role.CEILING, "bare FastAPI, send_text looped over a set", "fastapi_loop"
)
SOCKETIO = Target(
    "socketio-redis",
    Role.PEER,
    "python-socketio AsyncServer + AsyncRedisManager, rooms",
    "socketio_app",
    uses_redis=True,
    protocol=Protocol.ENGINEIO,
    publish_via=PublishVia.SOCKETIO_REDIS,
)
BROADCASTER = Target(
    "broadcaster-redis",
    Role.PEER,
    "encode/broadcaster Redis backend, one subscribe() per socket",
    "broadcaster_app",
    uses_redis=True,
    publish_via=PublishVia.BROADCASTER_REDIS,
    workarounds=BROADCASTER_WORKAROUNDS,
    venv="broadcaster",
)
PERMIT = Target(
    "permit-pubsub-redis",
    Role.PEER,
    "fastapi_websocket_pubsub PubSubEndpoint + Redis broadcaster",
    "permit_app",
    uses_redis=True,
    protocol=Protocol.PERMIT_RPC,
    venv="permit",
)

ALL_TARGETS: tuple[Target, ...] = (
    OURS_MEMORY,
    *OURS_REDIS,
    OURS_DIRECT,
    WEBSOCKETS,
    FASTAPI_LOOP,
    SOCKETIO,
    BROADCASTER,
    PERMIT,
)
#: Channels that keep history on targets with ``history``: the fan-out channel and the one
#: the memory figure is measured on (a full-match regular expression).
HISTORY_CHANNELS = r"fanout(-stored)?"

OURS_CLUSTER = Target(
    "ours-cluster-2w",
    Role.OURS,
    "fastapi-pubsub-cluster, 3-master Redis Cluster (SPUBLISH), 2 uvicorn workers",
    "ours",
    workers=2,
    uses_redis=True,
    uses_cluster=True,
    publish_via=PublishVia.OURS_REDIS,
)
OURS_HISTORY = Target(
    "ours-redis-history-1w",
    Role.OURS,
    "fastapi-pubsub-cluster, Redis, 1 uvicorn worker, history on (stream XADD + PUBLISH)",
    "ours",
    uses_redis=True,
    history=True,
    publish_via=PublishVia.OURS_REDIS,
)
#: The storm scenario's own systems: ours with the README's original count hook
#: (``generate_object_to_send`` returns the channel's cluster-wide count), plain ASGI and
#: ``--ws``; and the Redis-backed peers with 2 workers, as ours runs there.
OURS_COUNT = Target(
    "ours-redis-2w-count",
    Role.OURS,
    "fastapi-pubsub-cluster, Redis, 2 uvicorn workers, the README's original count hook",
    "ours",
    workers=2,
    uses_redis=True,
    publish_via=PublishVia.OURS_REDIS,
    ws_path="/count",
    count_hook=True,
)
OURS_DIRECT_COUNT = Target(
    "ours-redis-2w-direct-count",
    Role.OURS,
    "fastapi-pubsub-cluster, Redis, 2 uvicorn workers, --ws PubSubWebSocketProtocol, the "
    "README's original count hook",
    "ours",
    workers=2,
    uses_redis=True,
    publish_via=PublishVia.OURS_REDIS,
    ws_protocol=DIRECT_PROTOCOL,
    ws_path="/count",
    count_hook=True,
)
SOCKETIO_2W = Target(
    "socketio-redis-2w",
    Role.PEER,
    "python-socketio AsyncServer + AsyncRedisManager, rooms, 2 uvicorn workers",
    "socketio_app",
    workers=2,
    uses_redis=True,
    protocol=Protocol.ENGINEIO,
    publish_via=PublishVia.SOCKETIO_REDIS,
)
BROADCASTER_2W = Target(
    "broadcaster-redis-2w",
    Role.PEER,
    "encode/broadcaster Redis backend, one subscribe() per socket, 2 uvicorn workers",
    "broadcaster_app",
    workers=2,
    uses_redis=True,
    publish_via=PublishVia.BROADCASTER_REDIS,
    workarounds=BROADCASTER_WORKAROUNDS,
    venv="broadcaster",
)
PERMIT_2W = Target(
    "permit-pubsub-redis-2w",
    Role.PEER,
    "fastapi_websocket_pubsub PubSubEndpoint + Redis broadcaster, 2 uvicorn workers",
    "permit_app",
    workers=2,
    uses_redis=True,
    protocol=Protocol.PERMIT_RPC,
    workarounds=(
        "sockets routed to PubSubEndpoint.main_loop instead of register_route(): the route "
        "register_route() adds never listens to the broadcaster, so with 2 workers only the "
        "clients of the worker that published received anything.",
    ),
    env=(("BENCH_PERMIT_LISTEN", "1"),),
    venv="permit",
)
STORM_TARGETS: tuple[Target, ...] = (
    OURS_COUNT,
    OURS_DIRECT_COUNT,
    SOCKETIO_2W,
    BROADCASTER_2W,
    PERMIT_2W,
)
#: Targets only some scenarios run (never part of the peer comparison).
SCENARIO_TARGETS: tuple[Target, ...] = (
    OURS_CLUSTER,
    OURS_HISTORY,
    *OURS_DIRECT_POLICIES,
    WEBSOCKETS_DEFLATE,
    REDIS_PY_LOOP,
    *STORM_TARGETS,
)
KNOWN_TARGETS: tuple[Target, ...] = (*ALL_TARGETS, *SCENARIO_TARGETS)

#: The configuration every ratio is taken against.
REFERENCE = "ours-redis-1w"
CEILINGS = ("websockets", "fastapi-loop")


def by_name(name: str) -> Target:
    for target in KNOWN_TARGETS:
        if target.name == name:
            return target
    raise KeyError(name)
