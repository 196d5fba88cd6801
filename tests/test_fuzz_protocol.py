"""Fuzzing the protocol against a real server: random URLs and frames get a relay or their
documented close code, never an unhandled exception, while a well-behaved client keeps
receiving."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import msgpack
import pytest
import websockets
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fastapi_pubsub_cluster import PubSubHub, PubSubSettings
from fastapi_pubsub_cluster.errors import CloseCode, InvalidChannelError
from fastapi_pubsub_cluster.payloads import MAX_NESTING_DEPTH
from tests.apps.local_app import build_app
from tests.conftest import make_settings
from tests.live import connect, serve

MAX_BYTES = 4096
EXAMPLES = 300
DOCUMENTED = {CloseCode.INVALID_PAYLOAD, CloseCode.POLICY_VIOLATION, CloseCode.MESSAGE_TOO_BIG}
T = TypeVar("T")


@dataclass
class LiveServer:
    """A hub and uvicorn on an event loop in a background thread, with an observer client."""

    loop: asyncio.AbstractEventLoop
    url: str = ""
    hub: PubSubHub | None = None
    observer: Any = None
    errors: list[logging.LogRecord] = field(default_factory=list)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


class ErrorRecords(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def live_server() -> Iterator[LiveServer]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = LiveServer(loop)
    handler = ErrorRecords(server.errors)
    loggers = [logging.getLogger(name) for name in ("fastapi_pubsub_cluster", "uvicorn.error")]
    for logger in loggers:
        logger.addHandler(handler)
    stop = asyncio.Event()
    started = threading.Event()

    async def host() -> None:
        # Every example connects from the same address, whose allowance outlives each
        # connection: rates are not what this fuzzes (tests/test_inbound_limits.py).
        settings = make_settings(
            "fuzz",
            max_message_bytes=MAX_BYTES,
            inbound_messages_per_second=0,
            inbound_bytes_per_second=0,
        )
        async with PubSubHub(settings=settings) as hub, serve(build_app(hub)) as url:
            server.hub, server.url = hub, url
            server.observer = await connect(f"{url}/ws/observer")
            await server.observer.recv()  # its own count
            started.set()
            await stop.wait()
            await server.observer.close()

    hosting = asyncio.run_coroutine_threadsafe(host(), loop)
    assert started.wait(30)
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(stop.set)
        hosting.result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        for logger in loggers:
            logger.removeHandler(handler)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
nan_ish = st.sampled_from(
    ["NaN", "Infinity", "-Infinity", "1e999", "-1e400", "nan", "inf", "1e308", "-0", "1E+2"]
)
deep_depth = st.integers(MAX_NESTING_DEPTH - 2, 6000)
text_frames = st.one_of(
    st.text(max_size=200),
    json_values.map(json.dumps),
    nan_ish.map(lambda literal: f'{{"v": {literal}}}'),
    deep_depth.map(lambda n: "[" * n + "]" * n),
    deep_depth.map(lambda n: '{"a":' * n + "1" + "}" * n),
    deep_depth.map(lambda n: "[" * n),
    st.integers(1, 6000).map(lambda n: "9" * n),
    st.integers(MAX_BYTES - 10, MAX_BYTES + 10).map(lambda n: json.dumps("x" * (n - 2))),
)


def deep_msgpack(depth: int) -> bytes:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return bytes(msgpack.packb(value))


binary_frames = st.one_of(
    st.binary(max_size=200),
    json_values.filter(lambda v: _fits_msgpack(v)).map(lambda v: bytes(msgpack.packb(v))),
    st.sampled_from([math.nan, math.inf, -math.inf]).map(lambda f: bytes(msgpack.packb([f]))),
    deep_depth.filter(lambda n: n < 500).map(deep_msgpack),
    st.integers(MAX_BYTES - 10, MAX_BYTES + 10).map(lambda n: b"\xc4" + b"\x00" * n),
)
valid_channels = st.sampled_from(["fuzz", "fuzz.a", "room:1"]) | st.from_regex(
    r"[A-Za-z0-9_.:@+=-]{1,200}", fullmatch=True
)
channels = st.one_of(
    valid_channels,
    valid_channels,
    valid_channels,
    st.text(st.characters(blacklist_characters="/", blacklist_categories=("Cs",)), min_size=1),
    st.text(alphabet="ab{}-_", min_size=1, max_size=300),
)
resume_ids = st.one_of(
    st.none(),
    st.none(),
    st.none(),
    st.from_regex(r"[0-9]{1,22}-[0-9]{1,22}", fullmatch=True),
    st.text(max_size=30),
)


def _fits_msgpack(value: Any) -> bool:
    try:
        msgpack.packb(value)
    except (OverflowError, ValueError, TypeError):
        return False
    return True


def url_is_valid(channel: str, since: str | None) -> bool:
    rules = PubSubSettings()
    try:
        rules.validate_channel_id(channel)
        if since is not None:
            rules.validate_stream_id(since)
    except InvalidChannelError:
        return False
    return True


def strict_json(text: str) -> Any:
    """An oracle independent of the codec: strict JSON, 64-bit ints, bounded nesting."""

    def refuse(_: str) -> None:
        raise ValueError("constant")

    def finite(literal: str) -> float:
        if not math.isfinite(value := float(literal)):
            raise ValueError("infinite")
        return value

    def bounded(literal: str) -> int:
        if not -(2**63) <= (value := int(literal)) < 2**64:
            raise ValueError("too big")
        return value

    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    if deepest > MAX_NESTING_DEPTH:
        raise ValueError("too deep")
    return json.loads(text, parse_constant=refuse, parse_float=finite, parse_int=bounded)


async def exchange(server: LiveServer, channel: str, since: str | None, frame: str | bytes) -> str:
    """Open a socket, send ``frame``; returns the outcome."""
    query = "" if since is None else f"?since={quote(since, safe='')}"
    binary = isinstance(frame, bytes)
    wire = ("&" if query else "?") + "format=msgpack" if binary else ""
    ws = await connect(f"{server.url}/ws/{quote(channel, safe='')}{query}{wire}", max_size=None)
    try:
        async with asyncio.timeout(10):
            try:
                await ws.recv()  # its count
            except websockets.ConnectionClosed:
                assert not url_is_valid(channel, since), (channel, since, ws.close_code)
                assert ws.close_code == CloseCode.POLICY_VIOLATION
                return "URL refused with 1008"
            assert url_is_valid(channel, since), (channel, since)
            await ws.send(frame)
            try:
                while True:
                    reply = await ws.recv()
                    message = msgpack.unpackb(reply) if binary else json.loads(reply)
                    if isinstance(message, dict) and "echo" in message:
                        break
            except websockets.ConnectionClosed:
                assert ws.close_code in DOCUMENTED, ws.close_code
                if not binary and ws.close_code == CloseCode.INVALID_PAYLOAD:
                    with pytest.raises(ValueError):
                        strict_json(str(frame))
                return f"frame closed with {ws.close_code}"
            if not binary:
                assert message["echo"] == strict_json(str(frame))
            return "frame relayed"
    finally:
        await ws.close()


async def observer_still_receives(server: LiveServer, marker: int) -> None:
    assert server.hub is not None
    await server.hub.publish("observer", {"marker": marker})
    async with asyncio.timeout(5):
        while json.loads(await server.observer.recv()) != {"marker": marker}:
            pass


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    channel=channels,
    since=resume_ids,
    frame=st.one_of(text_frames, binary_frames),
)
def test_random_urls_and_frames_get_a_relay_or_a_documented_close_code(
    live_server: LiveServer, channel: str, since: str | None, frame: str | bytes
) -> None:
    event(live_server.run(exchange(live_server, channel, since, frame)))
    live_server.run(observer_still_receives(live_server, hash((channel, since, frame))))
    assert not live_server.errors, [r.getMessage() for r in live_server.errors]


# Values a client can send at all (64-bit integers): the requests are what is fuzzed here.
sendable = json_values.filter(_fits_msgpack)
requests = st.one_of(
    st.fixed_dictionaries({"join": channels | sendable}),
    st.fixed_dictionaries({"join": channels, "since": resume_ids | sendable}),
    st.fixed_dictionaries({"leave": channels | sendable}),
    st.dictionaries(st.sampled_from(["join", "leave", "since", "x"]), sendable, min_size=1),
).filter(lambda r: "join" in r or "leave" in r)


def join_is_valid(request: dict[str, Any]) -> bool:
    channel, since = request.get("join"), request.get("since")
    if set(request) - {"join", "since"} or not isinstance(channel, str):
        return False
    if since is not None and not isinstance(since, str):
        return False
    return url_is_valid(channel, since) and not channel.startswith("secret")


async def ask(server: LiveServer, request: dict[str, Any]) -> str:
    """Send a join or leave request from a rooms socket; check the answer and membership."""
    assert server.hub is not None
    ws = await connect(f"{server.url}/rooms/fuzz-home", max_size=None)
    try:
        async with asyncio.timeout(10):
            me = None
            while me is None:
                me = json.loads(await ws.recv()).get("me")
            await ws.send(json.dumps(request))
            answer = json.loads(await ws.recv())
            while answer.get("event") not in ("joined", "left", "refused"):
                answer = json.loads(await ws.recv())
            channel = request.get("join", request.get("leave"))
            if "join" in request and join_is_valid(request):
                assert (answer["event"], answer["channel"]) == ("joined", channel), answer
                assert me in await server.hub.members(channel)
            elif "join" not in request and isinstance(channel, str) and set(request) == {"leave"}:
                expected = "refused" if channel == "fuzz-home" else "left"
                assert answer["event"] == expected, (request, answer)
            else:
                assert answer["event"] == "refused", (request, answer)
                assert answer["reason"], answer
            # Still open and relaying.
            await ws.send(json.dumps({"after": 1}))
            while json.loads(await ws.recv()) != {"echo": {"after": 1}}:
                pass
            return str(answer["event"])
    finally:
        await ws.close()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests)
def test_random_join_and_leave_requests_are_answered_and_keep_the_socket_open(
    live_server: LiveServer, request: dict[str, Any]
) -> None:
    event(live_server.run(ask(live_server, request)))
    assert not live_server.errors, [r.getMessage() for r in live_server.errors]
