"""Per-connection limits on what one client sends, over real sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fastapi_pubsub_cluster import ConfigurationError, Metrics, PubSubHub, PubSubSettings
from fastapi_pubsub_cluster.errors import CloseCode
from fastapi_pubsub_cluster.limits import InboundLimiter, TokenBucket
from tests.apps.local_app import build_app
from tests.conftest import make_settings
from tests.live import close_code_of, connect, recv_until, serve


class CountingMetrics(Metrics):
    def __init__(self) -> None:
        self.limited = 0

    def inbound_limited(self) -> None:
        self.limited += 1


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_of_its_capacity_then_its_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, capacity=20, clock=clock)
    assert sum(bucket.take() for _ in range(25)) == 20
    clock.now += 0.5
    assert sum(bucket.take() for _ in range(25)) == 5


def test_inbound_limiter_holds_two_seconds_and_always_one_maximal_message() -> None:
    clock = Clock()
    limiter = InboundLimiter(
        messages_per_second=5, bytes_per_second=100, max_message_bytes=1000, clock=clock
    )
    assert limiter.admit(1000)  # larger than 2 s of bytes, still fits once
    assert not limiter.admit(1)
    clock.now += 20
    assert sum(limiter.admit(1) for _ in range(20)) == 10  # 2 s worth of messages


def test_zero_rates_mean_unlimited() -> None:
    limiter = InboundLimiter(messages_per_second=0, bytes_per_second=0, max_message_bytes=10)
    assert all(limiter.admit(10) for _ in range(10_000))


@pytest.mark.parametrize(
    "changes",
    [
        {"inbound_rate_policy": "ignore"},
        {"inbound_messages_per_second": -1},
        {"inbound_bytes_per_second": -1},
    ],
)
def test_bad_inbound_limits_are_configuration_errors(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        PubSubSettings(**changes)


async def test_client_sending_faster_than_its_message_rate_is_closed_1008(
    key_prefix: str,
) -> None:
    metrics = CountingMetrics()
    settings = make_settings(key_prefix, inbound_messages_per_second=5)
    async with PubSubHub(settings=settings, metrics=metrics) as hub, serve(build_app(hub)) as url:
        ws = await connect(f"{url}/ws/flood")
        await recv_until(ws, lambda m: "count" in m)
        for n in range(30):
            await ws.send(json.dumps({"n": n}))
        assert await close_code_of(ws) == CloseCode.POLICY_VIOLATION
        assert metrics.limited == 1


async def test_client_sending_more_bytes_than_its_byte_rate_is_closed_1008(
    key_prefix: str,
) -> None:
    settings = make_settings(key_prefix, inbound_bytes_per_second=1000, max_message_bytes=2000)
    async with PubSubHub(settings=settings) as hub, serve(build_app(hub)) as url:
        ws = await connect(f"{url}/ws/bytes")
        await recv_until(ws, lambda m: "count" in m)
        for _ in range(5):
            await ws.send(json.dumps({"pad": "x" * 900}))
        assert await close_code_of(ws) == CloseCode.POLICY_VIOLATION


async def test_drop_policy_drops_the_excess_and_keeps_the_socket_open(key_prefix: str) -> None:
    metrics = CountingMetrics()
    settings = make_settings(key_prefix, inbound_messages_per_second=5, inbound_rate_policy="drop")
    async with PubSubHub(settings=settings, metrics=metrics) as hub, serve(build_app(hub)) as url:
        ws = await connect(f"{url}/ws/drop")
        await recv_until(ws, lambda m: "count" in m)
        for n in range(30):
            await ws.send(json.dumps({"n": n}))
        echoed: list[Any] = []
        # The socket stays open: a message sent once the bucket refilled is relayed.
        while True:
            await ws.send(json.dumps({"ping": True}))
            try:
                await recv_until(ws, lambda m: m == {"echo": {"ping": True}}, 0.5, echoed)
                break
            except TimeoutError:
                continue
        relayed = [m["echo"]["n"] for m in echoed if "n" in m.get("echo", {})]
        assert 10 <= len(relayed) < 30
        assert metrics.limited >= 30 - len(relayed)
        await ws.close()
