"""The admission queue: joins and leaves go to Redis in batches, in the order they came, and
joins beyond its bound wait for room instead of being refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Literal

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from fastapi_pubsub_cluster.backends.redis.presence_writes import Change, ChangeQueue
from fastapi_pubsub_cluster.errors import PresenceError
from fastapi_pubsub_cluster.metrics import Metrics
from tests.live import wait_for_condition


class Writes:
    """A write function that records each batch, and can be held or made to fail."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate: asyncio.Event | None = None
        self.refuse: dict[str, Exception] = {}
        self.fail: Exception | None = None
        self.doubted: list[str] = []

    async def write(self, batch: list[Change]) -> dict[str, Exception]:
        self.batches.append([f"{c.kind} {c.channel} {c.connection_id}" for c in batch])
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return {channel: error for channel, error in self.refuse.items()}

    def doubt(self, changes: list[Change]) -> None:
        self.doubted.extend(change.channel for change in changes)


class AdmissionMetrics(Metrics):
    """Counts the joins that waited for room."""

    def __init__(self) -> None:
        self.admission_waits = 0

    def admission_waited(self) -> None:
        self.admission_waits += 1


async def answers_not() -> bool:
    return False


@pytest.fixture
async def writes() -> Writes:
    return Writes()


@pytest.fixture
def metrics() -> AdmissionMetrics:
    return AdmissionMetrics()


@pytest.fixture
async def queue(writes: Writes, metrics: AdmissionMetrics) -> AsyncIterator[ChangeQueue]:
    queue = ChangeQueue(
        writes.write,
        answers=answers_not,
        capacity=2,
        target="redis://test",
        metrics=metrics,
        doubt=writes.doubt,
    )
    runner = asyncio.create_task(queue.run_forever())
    yield queue
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner


def change(kind: Literal["j", "l"], connection_id: str, channel: str = "room") -> Change:
    return Change(kind, channel, connection_id, notify=True)


def submit(queue: ChangeQueue, *changes: Change) -> list[asyncio.Task[None]]:
    return [asyncio.create_task(queue.submit(c)) for c in changes]


async def settled(tasks: list[asyncio.Task[None]]) -> list[BaseException | None]:
    await asyncio.wait(tasks, timeout=5)
    return [t.exception() for t in tasks]


async def test_changes_submitted_together_are_written_as_one_batch_in_order(
    queue: ChangeQueue, writes: Writes
) -> None:
    tasks = submit(queue, change("j", "a"), change("j", "b"), change("l", "a"))
    assert await settled(tasks) == [None, None, None]
    assert writes.batches == [["j room a", "j room b", "l room a"]]


async def test_changes_that_arrive_during_a_write_go_in_the_next_batch_after_it(
    queue: ChangeQueue, writes: Writes
) -> None:
    writes.gate = asyncio.Event()
    first = submit(queue, change("j", "a"))
    await wait_for_condition(lambda: len(writes.batches) == 1, 5)  # being written
    later = submit(queue, change("l", "a"), change("l", "b"))
    await wait_for_condition(lambda: queue.waiting == 2, 5)
    assert writes.batches == [["j room a"]]
    writes.gate.set()
    assert await settled(first + later) == [None, None, None]
    assert writes.batches == [["j room a"], ["l room a", "l room b"]]


async def test_joins_beyond_the_bound_wait_for_room_and_then_go_in(
    queue: ChangeQueue, writes: Writes, metrics: AdmissionMetrics
) -> None:
    writes.gate = asyncio.Event()
    admitted = submit(queue, change("j", "a"), change("j", "b"))
    await wait_for_condition(lambda: len(writes.batches) == 1, 5)  # being written
    waiting = submit(queue, change("j", "c"))
    await wait_for_condition(lambda: metrics.admission_waits == 1, 5)
    assert queue.waiting == 0  # the third join waits outside the queue
    assert not waiting[0].done()
    writes.gate.set()
    assert await settled(admitted + waiting) == [None, None, None]
    assert writes.batches == [["j room a", "j room b"], ["j room c"]]


async def test_a_leave_is_never_held_back_by_a_full_queue(
    queue: ChangeQueue, writes: Writes
) -> None:
    writes.gate = asyncio.Event()
    admitted = submit(queue, change("j", "a"), change("j", "b"))
    await wait_for_condition(lambda: len(writes.batches) == 1, 5)  # being written, full
    leave = submit(queue, change("l", "x"))
    await wait_for_condition(lambda: queue.waiting == 1, 5)  # queued at once, not held
    writes.gate.set()
    assert await settled(admitted + leave) == [None, None, None]


async def test_a_channel_redis_refused_fails_only_its_own_changes(
    queue: ChangeQueue, writes: Writes
) -> None:
    writes.refuse = {"bad": RuntimeError("WRONGTYPE")}
    tasks = submit(queue, change("j", "a", "bad"), change("j", "b", "good"))
    errors = await settled(tasks)
    assert isinstance(errors[0], PresenceError) and errors[1] is None
    assert writes.doubted == ["bad"]


async def test_a_redis_that_does_not_answer_fails_the_batch_and_doubts_its_channels(
    queue: ChangeQueue, writes: Writes
) -> None:
    writes.fail = RedisConnectionError("connection refused")
    tasks = submit(queue, change("j", "a", "one"), change("l", "b", "two"))
    errors = await settled(tasks)
    assert all(isinstance(error, PresenceError) for error in errors)
    assert set(writes.doubted) == {"one", "two"}
    assert len(writes.batches) == 1  # Redis does not answer a fresh connection: no retry
