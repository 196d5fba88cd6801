"""Sockets in several channels: joined by the server (``self.join``) or by the client
(``{"join": ...}``), with presence, counts, per-channel history resume and refusals; on
every backend, and across two real workers on Redis."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from fastapi_pubsub_cluster import PubSubHub, PubSubSettings
from tests.apps.local_app import build_app
from tests.live import (
    close_code_of,
    connect,
    connect_identified,
    recv_json,
    recv_until,
    serve,
    stalled_client,
    wait_for_async_condition,
)
from tests.test_slow_clients import BIG


def of_channel(channel: str) -> Any:
    """Predicate: a message published to ``channel`` (tagged), not an event or a count."""
    return lambda m: (
        m.get("channel") == channel and "data" in m and "count" not in m.get("data", {})
    )


def event(name: str, channel: str) -> Any:
    return lambda m: m.get("event") == name and m.get("channel") == channel


async def has_count(hub: PubSubHub, channel: str, count: int) -> bool:
    return await hub.count(channel) == count


async def test_a_server_side_join_delivers_tagged_frames_and_counts(
    server: str, hub: PubSubHub
) -> None:
    ws, me = await connect_identified(f"{server}/rooms/home?also=extra,other")
    await recv_until(ws, event("joined", "other"))
    assert me in await hub.members("extra")
    assert me in await hub.members("other")
    await hub.publish("extra", {"n": 1})
    assert await recv_until(ws, of_channel("extra")) == {"channel": "extra", "data": {"n": 1}}
    # Its own channel keeps the plain frames of the original protocol.
    await hub.publish("home", {"n": 2})
    assert await recv_until(ws, lambda m: m == {"n": 2}) == {"n": 2}
    await ws.close()
    for channel in ("home", "extra", "other"):
        await wait_for_async_condition(lambda c=channel: has_count(hub, c, 0), 10)


async def test_client_join_and_leave(server: str, hub: PubSubHub) -> None:
    ws, me = await connect_identified(f"{server}/rooms/home")
    await ws.send(json.dumps({"join": "room"}))
    await recv_until(ws, event("joined", "room"))
    assert await hub.members("room") == {me}
    # generate_object_for runs for the channel joined, tagged with it.
    counted = await recv_until(ws, lambda m: m.get("channel") == "room" and "data" in m)
    assert counted["data"] == {"count": 1, "of": "room"}
    await hub.publish("room", {"hello": 1})
    assert (await recv_until(ws, of_channel("room")))["data"] == {"hello": 1}
    await ws.send(json.dumps({"leave": "room"}))
    await recv_until(ws, event("left", "room"))
    await wait_for_async_condition(lambda: has_count(hub, "room", 0), 10)
    await hub.publish("room", {"hello": 2})
    await hub.publish("home", {"marker": True})
    skipped: list[Any] = []
    await recv_until(ws, lambda m: m == {"marker": True}, skipped=skipped)
    assert not [m for m in skipped if m.get("channel") == "room" and "data" in m]
    # Leaving again, or a channel never joined, is answered "left" as well.
    await ws.send(json.dumps({"leave": "room"}))
    await recv_until(ws, event("left", "room"))
    await ws.close()


async def test_refused_joins_keep_the_socket_open_and_lose_nothing(
    settings: PubSubSettings,
) -> None:
    async with (
        PubSubHub(settings=settings.with_changes(max_channels_per_socket=2)) as hub,
        serve(build_app(hub)) as url,
    ):
        ws, me = await connect_identified(f"{url}/rooms/home")
        bad: list[tuple[Any, str, str]] = [
            ({"join": "secret-plans"}, "secret-plans", "not authorized"),
            ({"join": "no spaces allowed"}, "no spaces allowed", "channel"),
            ({"join": 5}, "", "expected"),
            ({"join": "fine", "extra": 1}, "fine", "expected"),
            ({"join": "fine", "since": 7}, "fine", "expected"),
            ({"join": "fine", "since": "not-an-id"}, "fine", "id"),
            ({"leave": "home"}, "home", "own channel"),
        ]
        for message, channel, reason in bad:
            await ws.send(json.dumps(message))
            refused = await recv_until(ws, lambda m: m.get("event") == "refused")
            assert refused["channel"] == channel, message
            assert reason in refused["reason"], (message, refused)
        await ws.send(json.dumps({"join": "second"}))
        await recv_until(ws, event("joined", "second"))
        await ws.send(json.dumps({"join": "third"}))
        refused = await recv_until(ws, lambda m: m.get("event") == "refused")
        assert refused["channel"] == "third" and "at most 2" in refused["reason"]
        assert await hub.members("third") == frozenset()
        assert await hub.members("secret-plans") == frozenset()
        # Still open, still in both channels.
        await hub.publish("second", {"still": "here"})
        assert (await recv_until(ws, of_channel("second")))["data"] == {"still": "here"}
        assert await hub.members("home") == {me}
        await ws.close()


async def test_client_joins_are_ordinary_messages_unless_the_class_opts_in(
    server: str, hub: PubSubHub
) -> None:
    ws = await connect(f"{server}/ws/plain")
    await recv_until(ws, lambda m: "count" in m)
    await ws.send(json.dumps({"join": "elsewhere"}))
    assert await recv_until(ws, lambda m: "echo" in m) == {"echo": {"join": "elsewhere"}}
    assert await hub.members("elsewhere") == frozenset()
    await ws.close()


async def test_tagged_frames_welcome_presence_and_targeted_sends(
    server: str, hub: PubSubHub
) -> None:
    ws = await connect(f"{server}/rooms/lobby?frames=tagged&name=ann")
    welcome = await recv_json(ws)
    assert welcome["event"] == "welcome" and welcome["channel"] == "lobby"
    me = welcome["connection_id"]
    presence = await recv_until(ws, event("presence", "lobby"))
    assert presence["count"] == 1 and presence["members"] == {me: {"name": "ann"}}
    other = await connect(f"{server}/rooms/lobby?name=bob")
    presence = await recv_until(ws, lambda m: m.get("event") == "presence" and m["count"] == 2)
    assert sorted(v["name"] for v in presence["members"].values()) == ["ann", "bob"]
    await hub.publish("lobby", {"x": 1})
    assert await recv_until(ws, of_channel("lobby")) == {"channel": "lobby", "data": {"x": 1}}
    assert await hub.send_to(me, {"just": "you"}) == 1
    assert await recv_until(ws, lambda m: "channel" not in m and "data" in m) == {
        "data": {"just": "you"}
    }
    await other.close()
    presence = await recv_until(ws, lambda m: m.get("event") == "presence" and m["count"] == 1)
    assert list(presence["members"]) == [me]
    await ws.close()


async def test_presence_events_carry_only_the_count_in_big_channels(
    settings: PubSubSettings,
) -> None:
    async with (
        PubSubHub(settings=settings.with_changes(presence_event_max_members=1)) as hub,
        serve(build_app(hub)) as url,
    ):
        ws = await connect(f"{url}/rooms/big?frames=tagged")
        first = await recv_until(ws, event("presence", "big"))
        assert first["count"] == 1 and len(first["members"]) == 1
        other = await connect(f"{url}/rooms/big")
        second = await recv_until(ws, lambda m: m.get("event") == "presence" and m["count"] == 2)
        assert "members" not in second
        for client in (ws, other):
            await client.close()


async def test_a_join_with_since_replays_that_channel_once_then_live(
    settings: PubSubSettings,
) -> None:
    async with (
        PubSubHub(settings=settings.with_changes(history_channels="log-.*")) as hub,
        serve(build_app(hub)) as url,
    ):
        # Something must hear the channel for ids to be told: a subscriber reads them.
        async with hub.subscribe("log-a") as messages:
            for n in range(3):
                await hub.publish("log-a", {"n": n})
            ids = [(await anext(messages))["id"] for _ in range(3)]
        ws, _ = await connect_identified(f"{url}/rooms/home")
        await ws.send(json.dumps({"join": "log-a", "since": ids[0]}))
        seen: list[Any] = []
        await recv_until(ws, event("joined", "log-a"))
        await hub.publish("log-a", {"n": 3})
        while len(seen) < 3:
            message = await recv_until(ws, of_channel("log-a"))
            seen.append(message)
        assert [m["data"] for m in seen] == [{"n": 1}, {"n": 2}, {"n": 3}]
        assert seen[0]["id"] == ids[1] and seen[1]["id"] == ids[2]
        # Nothing twice: the next channel message is a new one.
        await hub.publish("log-a", {"n": 4})
        assert (await recv_until(ws, of_channel("log-a")))["data"] == {"n": 4}
        await ws.close()


async def test_exclude_and_user_sends_with_further_channels(server: str, hub: PubSubHub) -> None:
    sender, sender_id = await connect_identified(f"{server}/rooms/a?also=shared&user=alice")
    other, _ = await connect_identified(f"{server}/rooms/b?also=shared")
    await recv_until(sender, event("joined", "shared"))
    await recv_until(other, event("joined", "shared"))
    await sender.send(json.dumps({"to": "shared", "say": "hi"}))
    assert (await recv_until(other, of_channel("shared")))["data"] == {"said": "hi"}
    await hub.publish("shared", {"marker": 1})
    skipped: list[Any] = []
    await recv_until(sender, lambda m: m.get("data") == {"marker": 1}, skipped=skipped)
    assert {"said": "hi"} not in [m.get("data") for m in skipped]
    # Leaving a further channel keeps the socket reachable by id and by user.
    await sender.send(json.dumps({"leave": "shared"}))
    await recv_until(sender, event("left", "shared"))
    await wait_for_async_condition(lambda: has_count(hub, "shared", 1), 10)
    assert await hub.send_to_user("alice", {"for": "alice"}) == 1
    assert await recv_until(sender, lambda m: m == {"for": "alice"}) == {"for": "alice"}
    assert await hub.send_to(sender_id, {"for": "you"}) == 1
    assert await recv_until(sender, lambda m: m == {"for": "you"}) == {"for": "you"}
    for ws in (sender, other):
        await ws.close()


async def test_a_slow_client_leaves_every_channel_it_was_in(settings: PubSubSettings) -> None:
    async with (
        PubSubHub(settings=settings.with_changes(send_queue_size=4)) as hub,
        serve(build_app(hub)) as url,
    ):
        ws = await stalled_client(f"{url}/rooms/slow?also=x1,x2")
        me = (await recv_until(ws, lambda m: "me" in m))["me"]
        await recv_until(ws, event("joined", "x2"))
        # The client stops reading; big messages fill every buffer between it and the server.
        payload = {"blob": BIG}
        for _ in range(40):
            await hub.publish("x1", payload)
        for channel in ("slow", "x1", "x2"):
            await wait_for_async_condition(lambda c=channel: has_count(hub, c, 0), 20)
        assert me not in await hub.members("x2")
        assert await close_code_of(ws, 20) in (1008, 1006)


@pytest.mark.slow
async def test_client_joins_across_two_workers(
    two_workers: tuple[str, str], two_hubs: tuple[PubSubHub, PubSubHub]
) -> None:
    a, b = two_workers
    observer, _ = two_hubs
    ws_a = await connect(f"{a.replace('http', 'ws')}/rooms/home-a?frames=tagged&name=ann")
    ws_b = await connect(f"{b.replace('http', 'ws')}/rooms/home-b?frames=tagged&name=bob")
    ids = [(await recv_json(ws))["connection_id"] for ws in (ws_a, ws_b)]
    for ws in (ws_a, ws_b):
        await ws.send(json.dumps({"join": "together"}))
        await recv_until(ws, event("joined", "together"))
    # Each sees both, with metadata, in its presence events and counts.
    for ws in (ws_a, ws_b):
        presence = await recv_until(
            ws, lambda m: m.get("event") == "presence" and m.get("count") == 2
        )
        assert presence["members"] == {ids[0]: {"name": "ann"}, ids[1]: {"name": "bob"}}
    assert await observer.members("together") == set(ids)
    async with httpx.AsyncClient(timeout=10) as http:
        await http.post(f"{a}/publish/together", json={"from": "a"})
    for ws in (ws_a, ws_b):
        assert (await recv_until(ws, of_channel("together")))["data"] == {"from": "a"}
    await ws_b.send(json.dumps({"leave": "together"}))
    await recv_until(ws_b, event("left", "together"))
    presence = await recv_until(ws_a, lambda m: m.get("event") == "presence" and m["count"] == 1)
    assert list(presence["members"]) == [ids[0]]
    assert await observer.members("together") == {ids[0]}
    # A's socket is still reachable by id from B's worker after B left a channel.
    async with httpx.AsyncClient(timeout=10) as http:
        sent = (await http.post(f"{b}/send/{ids[0]}", json={"direct": 1})).json()
    assert sent["sent"] == 1
    assert await recv_until(ws_a, lambda m: m.get("data") == {"direct": 1})
    await ws_a.close()
    await ws_b.close()
    await wait_for_async_condition(lambda: has_count(observer, "together", 0), 10)


async def test_a_refusal_names_the_channel_exactly_as_asked(server: str, hub: PubSubHub) -> None:
    ws, _ = await connect_identified(f"{server}/rooms/home")
    too_long = "x" * (hub.settings.max_channel_id_length + 50)
    await ws.send(json.dumps({"join": too_long}))
    refused = await recv_until(ws, lambda m: m.get("event") == "refused")
    assert refused["channel"] == too_long and "retry" not in refused
    await ws.close()


async def test_a_tagged_client_learns_where_to_resume_before_any_message(
    settings: PubSubSettings,
) -> None:
    async with (
        PubSubHub(settings=settings.with_changes(history_channels="hist-.*")) as hub,
        serve(build_app(hub)) as url,
    ):
        async with hub.subscribe("hist-a") as messages:
            await hub.publish("hist-a", {"n": "before"})
            before = (await anext(messages))["id"]
        ws = await connect(f"{url}/rooms/hist-a?frames=tagged")
        welcome = await recv_json(ws)
        assert welcome["last_id"] == before
        await ws.send(json.dumps({"join": "hist-b"}))
        joined = await recv_until(ws, event("joined", "hist-b"))
        # Nothing stored there yet: still a position that vouches for what comes next.
        assert re.fullmatch(r"\d+-\d+", joined["last_id"])
        await ws.close()
        # Published while it is away, before it ever saw a message: resuming from the ids
        # it was told gets them, once, and nothing older.
        for n in range(2):
            await hub.publish("hist-a", {"n": n})
            await hub.publish("hist-b", {"n": n})
        ws = await connect(f"{url}/rooms/hist-a?frames=tagged&since={welcome['last_id']}")
        await ws.send(json.dumps({"join": "hist-b", "since": joined["last_id"]}))
        got: dict[str, list[Any]] = {"hist-a": [], "hist-b": []}
        skipped: list[Any] = []
        while sum(map(len, got.values())) < 4:
            message = await recv_until(
                ws, lambda m: m.get("channel") in got and "n" in m.get("data", {}), skipped=skipped
            )
            got[message["channel"]].append(message["data"])
        assert got == {"hist-a": [{"n": 0}, {"n": 1}], "hist-b": [{"n": 0}, {"n": 1}]}
        assert not [m for m in skipped if "history_gap" in m], skipped
        await ws.close()
