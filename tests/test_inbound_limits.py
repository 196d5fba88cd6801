"""Per-connection limits on what one client sends, over real sockets."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets

from fastapi_pubsub_cluster import ConfigurationError, Metrics, PubSubHub, PubSubSettings
from fastapi_pubsub_cluster.errors import CloseCode
from fastapi_pubsub_cluster.limits import InboundAllowances, InboundLimiter, TokenBucket
from tests.apps.local_app import build_app
from tests.conftest import make_settings
from tests.live import close_code_of, connect, recv_until, serve

#: Another loopback address than the tests' own 127.0.0.1: a client from elsewhere.
OTHER_HOST = "127.0.0.2"


class CountingMetrics(Metrics):
    def __init__(self) -> None:
        self.limited = 0
        self.refused = 0

    def inbound_limited(self) -> None:
        self.limited += 1

    def inbound_refused(self) -> None:
        self.refused += 1


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
        {"inbound_cooldown": -1},
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


def test_token_bucket_tells_how_long_until_it_holds_enough() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10, capacity=20, clock=clock)
    assert bucket.wait_time(5) == 0
    assert sum(bucket.take() for _ in range(20)) == 20
    assert bucket.wait_time(5) == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.take(5)


def test_an_address_starts_where_its_last_connection_left_off_until_refilled() -> None:
    clock = Clock()
    allowances = InboundAllowances(5, 0, 1000, clock=clock)
    first = allowances.limiter("10.0.0.1")
    assert sum(first.admit(1) for _ in range(20)) == 10
    allowances.release("10.0.0.1", first, flooded=False)
    assert not allowances.limiter("10.0.0.1").admit(1)  # no fresh burst
    other = allowances.limiter("10.0.0.2")
    assert sum(other.admit(1) for _ in range(20)) == 10
    clock.now += 2.0  # refilled: nothing left to remember
    again = allowances.limiter("10.0.0.1")
    assert sum(again.admit(1) for _ in range(20)) == 10


def test_remembered_addresses_are_bounded() -> None:
    allowances = InboundAllowances(5, 0, 1000, cooldown=60, size=3, clock=Clock())
    for n in range(5):
        limiter = allowances.limiter(f"10.0.0.{n}")
        assert not all(limiter.admit(1) for _ in range(20))
        allowances.release(f"10.0.0.{n}", limiter, flooded=True)
    assert [allowances.cooling_down(f"10.0.0.{n}") > 0 for n in range(5)] == [
        False,
        False,
        True,
        True,
        True,
    ]
    assert allowances.limiter("10.0.0.0").admit(1)  # forgotten, the oldest first
    assert not allowances.limiter("10.0.0.4").admit(1)


async def test_throttled_client_is_slowed_and_loses_nothing(key_prefix: str) -> None:
    metrics = CountingMetrics()
    settings = make_settings(
        key_prefix, inbound_messages_per_second=10, inbound_rate_policy="throttle"
    )
    async with PubSubHub(settings=settings, metrics=metrics) as hub, serve(build_app(hub)) as url:
        ws = await connect(f"{url}/ws/throttle")
        await recv_until(ws, lambda m: "count" in m)
        for n in range(40):  # twice the burst of 20
            await ws.send(json.dumps({"n": n}))
        echoed: list[Any] = []
        await recv_until(ws, lambda m: m == {"echo": {"n": 39}}, 20, echoed)
        relayed = [m["echo"]["n"] for m in echoed if "n" in m.get("echo", {})]
        assert [*relayed, 39] == list(range(40))
        assert metrics.limited >= 10  # read only as the allowance came back
        await ws.send(json.dumps({"n": "still open"}))
        assert await recv_until(ws, lambda m: "echo" in m) == {"echo": {"n": "still open"}}
        await ws.close()


async def flood_until_closed(url: str, messages: int) -> tuple[int | None, int]:
    """Connect, send ``messages`` at once, read until closed or every one is echoed;
    returns (close code or None if still open, messages echoed)."""
    ws = await connect(url)
    await recv_until(ws, lambda m: "count" in m)
    for n in range(messages):
        await ws.send(json.dumps({"n": n}))
    echoed = 0
    try:
        async with asyncio.timeout(10):
            while echoed < messages:
                if "n" in json.loads(await ws.recv()).get("echo", {}):
                    echoed += 1
    except websockets.ConnectionClosed:
        return ws.close_code, echoed
    await ws.close()
    return None, echoed


async def test_reconnecting_flooder_does_not_get_a_fresh_allowance(key_prefix: str) -> None:
    settings = make_settings(key_prefix, inbound_messages_per_second=5, inbound_cooldown=0)
    async with PubSubHub(settings=settings) as hub, serve(build_app(hub)) as url:
        assert (await flood_until_closed(f"{url}/ws/again", 30))[0] == CloseCode.POLICY_VIOLATION
        # At once, from the same address: the burst of 10 it would get afresh is not there.
        code, echoed = await flood_until_closed(f"{url}/ws/again", 10)
        assert code == CloseCode.POLICY_VIOLATION
        assert echoed < 10
        # Another address has its own allowance.
        other = f"{url}/ws/again"
        ws = await connect(other, local_addr=(OTHER_HOST, 0))
        await recv_until(ws, lambda m: "count" in m)
        for n in range(10):
            await ws.send(json.dumps({"n": n}))
        await recv_until(ws, lambda m: m == {"echo": {"n": 9}})
        await ws.close()


async def test_address_closed_for_flooding_is_refused_with_1008_while_cooling_down(
    key_prefix: str,
) -> None:
    metrics = CountingMetrics()
    settings = make_settings(key_prefix, inbound_messages_per_second=5, inbound_cooldown=60)
    async with PubSubHub(settings=settings, metrics=metrics) as hub, serve(build_app(hub)) as url:
        assert (await flood_until_closed(f"{url}/ws/cool", 30))[0] == CloseCode.POLICY_VIOLATION
        assert metrics.refused == 0
        ws = await connect(f"{url}/ws/cool")
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()  # closed before it joined: not even a count message
        assert ws.close_code == CloseCode.POLICY_VIOLATION
        assert ws.close_reason.startswith("sending too fast: try again in")
        assert metrics.refused == 1
        # Other addresses are not cooling down.
        other = await connect(f"{url}/ws/cool", local_addr=(OTHER_HOST, 0))
        assert await recv_until(other, lambda m: "count" in m) == {"count": 1}
        await other.close()


async def test_cooldown_applies_to_the_disconnect_policy_only(key_prefix: str) -> None:
    settings = make_settings(
        key_prefix,
        inbound_messages_per_second=5,
        inbound_rate_policy="throttle",
        inbound_cooldown=60,
    )
    async with PubSubHub(settings=settings) as hub, serve(build_app(hub)) as url:
        code, echoed = await flood_until_closed(f"{url}/ws/calm", 12)
        assert (code, echoed) == (None, 12)
        ws = await connect(f"{url}/ws/calm")
        assert await recv_until(ws, lambda m: "count" in m) == {"count": 1}
        await ws.close()
