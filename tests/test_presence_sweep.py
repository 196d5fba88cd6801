"""The periodic sweep: every channel is reconciled now and then, even when nothing marked
it in doubt, so that presence lost behind a worker's back comes back by itself."""

from __future__ import annotations

import asyncio
import itertools

import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from fastapi_pubsub_cluster import PubSubHub
from fastapi_pubsub_cluster.backends.redis import RedisKeys
from fastapi_pubsub_cluster.backends.redis.upkeep import (
    CHANNELS_PER_BEAT,
    CONNECTIONS_PER_ROUND_TRIP,
    round_trips,
)
from tests.apps.local_app import build_app
from tests.conftest import make_settings
from tests.live import connect_identified, serve, wait_for_async_condition

#: More channels than one heartbeat's share of the sweep, so that it takes several.
CHANNELS = 150


async def test_members_removed_behind_the_workers_back_come_back_on_every_channel(
    redis_url: str, key_prefix: str, redis_client: aioredis.Redis
) -> None:
    keys = RedisKeys(key_prefix)
    channels = [f"sweep-{index}" for index in range(CHANNELS)]
    # A heartbeat every 0.2 s: a sweep over every channel starts about every 2 s.
    settings = make_settings(key_prefix, redis_url, heartbeat_ttl=0.6)
    async with PubSubHub(settings=settings) as hub, serve(build_app(hub)) as url:
        clients = await asyncio.gather(
            *(connect_identified(f"{url}/id/{channel}") for channel in channels)
        )
        expected = {
            channel: {connection_id}
            for channel, (_, connection_id) in zip(channels, clients, strict=True)
        }

        async def members_are_right() -> bool:
            for channel in channels:
                if await hub.members(channel) != expected[channel]:
                    return False
            return True

        await wait_for_async_condition(members_are_right, 10)
        # Redis loses the entries (a flush by an operator, a failover to a stale replica),
        # while the worker's heartbeat key and the list of its channels stay.
        # One DEL for all: the sweep runs meanwhile, so members may come back at any time
        # after it, but every set was gone at once.
        assert await redis_client.delete(*(keys.members(channel) for channel in channels)) == len(
            channels
        )
        await wait_for_async_condition(members_are_right, 15)
        for ws, _ in clients:
            await ws.close()


@given(st.lists(st.integers(min_value=0, max_value=CONNECTIONS_PER_ROUND_TRIP * 2), max_size=300))
def test_round_trips_keep_order_and_bound_each_pipeline(sizes: list[int]) -> None:
    channels = [f"c{index}" for index in range(len(sizes))]
    size_of = dict(zip(channels, sizes, strict=True))
    groups = list(round_trips(channels, size_of.__getitem__))
    assert [channel for group in groups for channel in group] == channels
    for group in groups:
        assert 1 <= len(group) <= CHANNELS_PER_BEAT
        weight = sum(size_of[channel] for channel in group)
        assert len(group) == 1 or weight <= CONNECTIONS_PER_ROUND_TRIP
    # A group is cut only where the next channel would not fit.
    for group, following in itertools.pairwise(groups):
        weight = sum(size_of[channel] for channel in group) + size_of[following[0]]
        assert len(group) == CHANNELS_PER_BEAT or weight > CONNECTIONS_PER_ROUND_TRIP
