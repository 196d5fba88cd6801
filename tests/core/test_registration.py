"""Registration decides what this worker follows: a channel is followed while anything here
listens to it, whatever order first joins and last leaves race in (one lock)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

import pytest

from fastapi_pubsub_cluster.core.backend import PresenceStore, Transport
from fastapi_pubsub_cluster.core.client import ClientConnection
from fastapi_pubsub_cluster.core.registration import Registration
from fastapi_pubsub_cluster.tasks import TaskSupervisor


class SlowTransport:
    """A transport whose follow and unfollow wait until the test lets them finish."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.gates: dict[str, asyncio.Event] = {}
        self.fail_next_follow = False

    def hold(self, call: str) -> asyncio.Event:
        gate = self.gates[call] = asyncio.Event()
        return gate

    async def _call(self, call: str, channel: str) -> None:
        self.log.append(f"{call} {channel}")
        gate = self.gates.pop(call, None)
        if gate is not None:
            await gate.wait()

    async def follow(self, channel: str) -> None:
        await self._call("follow", channel)
        if self.fail_next_follow:
            self.fail_next_follow = False
            raise ConnectionError("no answer")

    async def unfollow(self, channel: str) -> None:
        await self._call("unfollow", channel)


class RecordingPresence:
    """A presence store that records the joins and leaves it is given."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def join(
        self,
        channel: str,
        connection_id: str,
        *,
        notify: bool,
        user_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        directory: bool = True,
    ) -> None:
        self.log.append(f"join {channel} {connection_id}")

    async def leave(
        self, channel: str, connection_id: str, *, notify: bool, directory: bool = True
    ) -> None:
        self.log.append(f"leave {channel} {connection_id}")


class FakeConnection:
    def __init__(self, connection_id: str, channel: str) -> None:
        self.id = connection_id
        self.channel = channel
        self.user_id: str | None = None
        self.metadata: dict[str, Any] | None = None


class World:
    """A registration over the fakes, with the core's listeners as a plain set."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.listeners: set[str] = set()
        self.dropped: list[str] = []
        self.transport = SlowTransport(self.log)
        self.registration = Registration(
            cast(Transport, self.transport),
            cast(PresenceStore, RecordingPresence(self.log)),
            TaskSupervisor("test"),
            listens=lambda channel: channel in self.listeners,
            unfollowed=self.dropped.append,
        )


async def finished(*tasks: asyncio.Task[Any]) -> None:
    await asyncio.wait_for(asyncio.gather(*tasks), 5)


async def test_a_channel_with_listeners_is_followed_once_however_many_ask_at_once() -> None:
    world = World()
    world.listeners.add("room")
    await finished(
        *(asyncio.create_task(world.registration.update_following("room")) for _ in range(5))
    )
    assert world.log == ["follow room"]
    assert world.registration.follows("room")


async def test_a_channel_counts_as_followed_while_its_follow_is_in_progress() -> None:
    world = World()
    world.listeners.add("room")
    gate = world.transport.hold("follow")
    following = asyncio.create_task(world.registration.update_following("room"))
    await asyncio.sleep(0)
    assert world.registration.follows("room")
    gate.set()
    await finished(following)


async def test_a_last_leave_racing_a_first_join_ends_with_the_channel_unfollowed() -> None:
    world = World()
    world.listeners.add("room")
    gate = world.transport.hold("follow")
    joining = asyncio.create_task(world.registration.update_following("room"))
    await asyncio.sleep(0)
    world.listeners.discard("room")  # the listener is gone before the follow completes
    leaving = asyncio.create_task(world.registration.unfollow_if_unused("room"))
    await asyncio.sleep(0)
    gate.set()
    await finished(joining, leaving)
    assert world.log == ["follow room", "unfollow room"]
    assert not world.registration.follows("room")
    assert world.dropped == ["room"]


async def test_a_first_join_racing_an_unfollow_ends_with_the_channel_followed() -> None:
    world = World()
    world.listeners.add("room")
    await world.registration.update_following("room")
    world.listeners.discard("room")
    gate = world.transport.hold("unfollow")
    leaving = asyncio.create_task(world.registration.unfollow_if_unused("room"))
    await asyncio.sleep(0)
    world.listeners.add("room")  # a new listener while the unfollow is on its way
    joining = asyncio.create_task(world.registration.update_following("room"))
    await asyncio.sleep(0)
    gate.set()
    await finished(leaving, joining)
    assert world.log == ["follow room", "unfollow room", "follow room"]
    assert world.registration.follows("room")


async def test_a_failed_follow_leaves_the_channel_unfollowed_and_the_next_join_tries_again() -> (
    None
):
    world = World()
    world.listeners.add("room")
    world.transport.fail_next_follow = True
    with pytest.raises(ConnectionError):
        await world.registration.update_following("room")
    assert not world.registration.follows("room")
    await world.registration.update_following("room")
    assert world.log == ["follow room", "follow room"]
    assert world.registration.follows("room")


async def test_a_connection_is_registered_after_its_channel_is_followed() -> None:
    world = World()
    world.listeners.add("room")
    connection = cast(ClientConnection, FakeConnection("c1", "room"))
    await world.registration.register(connection, "room", notify=True)
    assert world.log == ["follow room", "join room c1"]


async def test_unregistering_leaves_further_channels_first_then_unfollows_those_unused() -> None:
    world = World()
    world.listeners.update({"room", "side"})
    connection = cast(ClientConnection, FakeConnection("c1", "room"))
    for channel in ("room", "side"):
        await world.registration.register(connection, channel, notify=True)
    world.listeners.clear()
    leaving = world.registration.unregister(connection, ["room", "side"], notify=True)
    await finished(leaving)
    assert world.log[-4:] == ["leave side c1", "unfollow side", "leave room c1", "unfollow room"]


def test_nothing_is_followed_after_forget_all() -> None:
    world = World()
    world.registration.forget_all()
    assert not world.registration.follows("room")
