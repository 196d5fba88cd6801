"""The Python client (``fastapi_pubsub_cluster.remote.PubSubClient``) against a real server
in this process, on each backend: messages, sends, joins and leaves, both wire formats,
refusals, gaps, and reconnecting after the server closes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import pytest

from fastapi_pubsub_cluster import PubSubHub, PubSubSettings
from fastapi_pubsub_cluster.remote import (
    ClientClosedError,
    ClientState,
    Closed,
    ConnectionRefusedByServerError,
    Direct,
    Event,
    Gap,
    JoinRefusedError,
    Message,
    Opened,
    Presence,
    PubSubClient,
    Refused,
    WireFormat,
)
from tests.apps.client_app import build_app
from tests.live import serve

HISTORY = "feed-.*"
E = TypeVar("E")


@pytest.fixture
async def base(settings: PubSubSettings) -> AsyncIterator[tuple[PubSubHub, str]]:
    """The client test app around a hub of the parametrised backend; its ``ws://`` URL."""
    history = settings.with_changes(history_channels=HISTORY)
    async with PubSubHub(settings=history) as hub, serve(build_app(hub)) as url:
        yield hub, url


async def next_of(
    client: PubSubClient, kind: type[E], timeout: float = 10.0, record: list[Event] | None = None
) -> E:
    """The next event of ``kind``; those before it are passed over (kept in ``record``)."""
    async with asyncio.timeout(timeout):
        while True:
            event = await client.receive()
            if record is not None:
                record.append(event)
            if isinstance(event, kind):
                return event


async def collect_until(client: PubSubClient, done: Any, timeout: float = 10.0) -> list[Event]:
    """Every event up to and including the first for which ``done(event)`` holds."""
    events: list[Event] = []
    async with asyncio.timeout(timeout):
        while not events or not done(events[-1]):
            events.append(await client.receive())
    return events


@pytest.mark.parametrize("wire_format", ["json", "msgpack"])
async def test_messages_arrive_and_sends_reach_the_server_in_either_format(
    base: tuple[PubSubHub, str], wire_format: WireFormat
) -> None:
    hub, url = base
    payload: dict[str, Any] = {"text": "héllo ✓", "ints": [0, -1, 2**40], "f": 0.5, "n": None}
    async with PubSubClient(f"{url}/ws/lobby", format=wire_format) as client:
        assert client.state is ClientState.OPEN and client.format == wire_format
        assert client.connection_id and client.channels == ["lobby"]
        await hub.publish("lobby", payload)
        message = await next_of(client, Message)
        assert message == Message("lobby", payload, None)

        # The socket class publishes what it is sent as {"echo": data}.
        sent = {"from": "python", "nested": {"list": [1, 2]}}
        if wire_format == "msgpack":
            sent["raw"] = b"\x00\xff"  # type: ignore[assignment]
        await client.send(sent)
        echo = await next_of(client, Message)
        assert echo.data == {"echo": sent}
    assert client.state is ClientState.CLOSED


async def test_history_channel_messages_carry_their_stream_ids_and_resume_points(
    base: tuple[PubSubHub, str],
) -> None:
    hub, url = base
    async with PubSubClient(f"{url}/ws/feed-1") as client:
        start = client.last_id("feed-1")
        assert start is not None  # the welcome says where the channel's messages start
        for n in range(3):
            await hub.publish("feed-1", {"n": n})
        messages = [await next_of(client, Message) for _ in range(3)]
        assert [m.data for m in messages] == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert all(m.id for m in messages) and client.last_id("feed-1") == messages[-1].id


async def test_joining_and_leaving_further_channels(base: tuple[PubSubHub, str]) -> None:
    hub, url = base
    async with PubSubClient(f"{url}/ws/lobby") as client:
        await client.join("room-2")
        assert client.channels == ["lobby", "room-2"]
        presence = await next_of(client, Presence)
        assert presence.channel in ("lobby", "room-2")
        await hub.publish("room-2", {"hello": "room-2"})
        await hub.publish("lobby", {"hello": "lobby"})
        received = [await next_of(client, Message) for _ in range(2)]
        assert [(m.channel, m.data) for m in received] == [
            ("room-2", {"hello": "room-2"}),
            ("lobby", {"hello": "lobby"}),
        ]

        # A refused join raises with the server's reason; the connection stays open.
        with pytest.raises(JoinRefusedError, match="not authorized"):
            await client.join("secret-x")
        with pytest.raises(JoinRefusedError):
            await client.leave("lobby")
        assert client.channels == ["lobby", "room-2"]

        await client.leave("room-2")
        assert client.channels == ["lobby"]
        await hub.publish("room-2", {"after": "leave"})
        await hub.publish("lobby", {"marker": True})
        events = await collect_until(
            client, lambda e: isinstance(e, Message) and e.data == {"marker": True}
        )
        assert not [e for e in events if isinstance(e, Message) and e.channel == "room-2"]
        assert not [e for e in events if isinstance(e, Closed)]


async def test_messages_filters_by_channel(base: tuple[PubSubHub, str]) -> None:
    hub, url = base
    async with PubSubClient(f"{url}/ws/lobby") as client:
        await client.join("room-3")
        await hub.publish("lobby", {"skip": True})
        await hub.publish("room-3", {"take": True})
        async with asyncio.timeout(10):
            async for message in client.messages("room-3"):
                assert message.data == {"take": True}
                break


async def test_a_join_fails_at_once_where_the_socket_class_takes_none(
    base: tuple[PubSubHub, str],
) -> None:
    _, url = base
    async with PubSubClient(f"{url}/own/lobby") as client:
        with pytest.raises(JoinRefusedError, match="does not take joins"):
            await client.join("room-1")
        assert client.channels == ["lobby"]
        refused = await next_of(client, Refused)
        assert refused.channel == "room-1" and not refused.retry


async def test_a_connection_refused_before_its_welcome_is_not_retried(
    base: tuple[PubSubHub, str],
) -> None:
    _, url = base
    client = PubSubClient(f"{url}/ws/has%20space", min_delay=0.01)
    with pytest.raises(ConnectionRefusedByServerError, match="1008"):
        async with asyncio.timeout(10):
            await client.connect()
    assert client.state is ClientState.CLOSED
    closed = await next_of(client, Closed)
    assert closed.code == 1008 and closed.reconnect_in is None
    with pytest.raises(ConnectionRefusedByServerError):
        await client.receive()
    await client.close()


async def test_a_refused_resume_position_is_a_gap_then_a_fresh_connection(
    base: tuple[PubSubHub, str],
) -> None:
    hub, url = base
    async with asyncio.timeout(10):
        async with PubSubClient(f"{url}/ws/feed-b?since=yesterday", min_delay=0.01) as client:
            gap = await next_of(client, Gap)
            assert gap.channel == "feed-b" and gap.since == "yesterday" and gap.oldest is None
            assert gap.reason and "stream id" in gap.reason
            await hub.publish("feed-b", {"n": 1})
            assert (await next_of(client, Message)).data == {"n": 1}
            assert client.last_id("feed-b") != "yesterday"


async def test_a_resume_from_further_back_than_history_is_a_gap(
    settings: PubSubSettings,
) -> None:
    """History keeps 5 messages (a stream trims by whole nodes of 100: 250 lose the first)."""
    small = settings.with_changes(history_channels=HISTORY, history_size=5)
    async with PubSubHub(settings=small) as hub, serve(build_app(hub)) as url:
        async with PubSubClient(f"{url}/ws/feed-g") as watcher:
            await hub.publish("feed-g", {"n": 0})
            first = (await next_of(watcher, Message)).id
        for n in range(1, 250):
            await hub.publish("feed-g", {"n": n})
        async with PubSubClient(f"{url}/ws/feed-g?since={first}") as client:
            events = await collect_until(
                client, lambda e: isinstance(e, Message) and e.data == {"n": 249}
            )
        gaps = [e for e in events if isinstance(e, Gap)]
        assert len(gaps) == 1 and gaps[0].since == first and gaps[0].oldest
        kept = [e.data["n"] for e in events if isinstance(e, Message)]
        assert kept == list(range(250 - len(kept), 250)) and len(kept) >= 5


async def test_the_client_reconnects_after_server_closes_and_resumes_exactly(
    base: tuple[PubSubHub, str],
) -> None:
    """Going away, internal error, restart, try again later: each time the client comes
    back by itself after a jittered delay within its cap, resuming its history channels
    (its own and a joined one) without a loss or a repeat."""
    hub, url = base
    codes = [1001, 1011, 1012, 1013]
    record: list[Event] = []
    async with PubSubClient(f"{url}/ws/feed-r", min_delay=0.05, max_delay=0.4) as client:
        await client.join("feed-j")
        for n, code in enumerate(codes):
            await hub.publish("feed-r", {"n": n})
            await hub.publish("feed-j", {"n": n})
            await client.send({"close_with": code})
            closed = await next_of(client, Closed, record=record)
            assert closed.code == code and closed.reconnect_in is not None
            assert 0 <= closed.reconnect_in <= 0.05  # welcomes reset the cap
            await hub.publish("feed-r", {"away": n})  # while it is away, or just back
            await hub.publish("feed-j", {"away": n})
            assert (await next_of(client, Opened, record=record)).resumed
        await hub.publish("feed-r", {"last": True})
        await hub.publish("feed-j", {"last": True})
        for channel in ("feed-r", "feed-j"):
            while not any(
                isinstance(e, Message) and e.channel == channel and e.data == {"last": True}
                for e in record
            ):
                await next_of(client, Message, record=record)
    expected = [d for n in range(len(codes)) for d in ({"n": n}, {"away": n})]
    expected.append({"last": True})
    for channel in ("feed-r", "feed-j"):
        got = [e.data for e in record if isinstance(e, Message) and e.channel == channel]
        assert got == expected, channel  # none lost, none twice, in order
    assert not [e for e in record if isinstance(e, Gap)]


async def test_closing_ends_iteration_and_fails_what_waits(
    base: tuple[PubSubHub, str],
) -> None:
    _, url = base
    client = PubSubClient(f"{url}/ws/lobby")
    await client.connect()
    seen: list[Event] = []

    async def read() -> None:
        async for event in client.events():
            seen.append(event)

    reader = asyncio.create_task(read())
    await client.close()
    await asyncio.wait_for(reader, 10)
    assert isinstance(seen[-1], Closed) and seen[-1].reconnect_in is None
    assert any(isinstance(e, Direct) for e in seen)  # the app's {"pid": ...}
    with pytest.raises(ClientClosedError):
        await client.join("room-1")
    with pytest.raises(ClientClosedError):
        await client.send({"late": True})
    await client.close()  # idempotent


async def test_an_address_cooling_down_after_flooding_is_retried_after_the_wait(
    settings: PubSubSettings,
) -> None:
    # Over its inbound rate the client is closed; reconnecting at once, it is refused with
    # "try again in 1 s" before its welcome: not for good, it comes back after the wait.
    strict = settings.with_changes(inbound_messages_per_second=1.0, inbound_cooldown=1.0)
    async with (
        PubSubHub(settings=strict) as hub,
        serve(build_app(hub)) as url,
        PubSubClient(f"{url}/ws/flood", min_delay=0.01, max_delay=0.05) as client,
    ):
        for n in range(5):
            await client.send({"n": n})
        closed = await next_of(client, Closed)
        assert closed.code == 1008
        refused = await next_of(client, Closed)
        assert "try again in" in refused.reason and refused.reconnect_in is not None
        assert refused.reconnect_in >= 1.0
        reopened = await next_of(client, Opened, timeout=10)
        assert reopened.resumed
