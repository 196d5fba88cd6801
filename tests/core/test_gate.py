"""The channel gate: joins and leaves run side by side, a reconciliation runs alone, and
neither ever waits on the other for good."""

from __future__ import annotations

import asyncio
import random
from contextlib import AbstractAsyncContextManager

from fastapi_pubsub_cluster.backends.redis.gate import ChannelGate


async def test_changes_of_one_channel_run_side_by_side() -> None:
    gate = ChannelGate()
    async with gate.change("room"):
        await asyncio.wait_for(_hold(gate.change("room")), 1)


async def test_a_reconciliation_waits_for_the_changes_in_flight() -> None:
    gate = ChannelGate()
    log: list[str] = []
    change = gate.changes(["room"])
    await change.__aenter__()
    reconciling = asyncio.create_task(_mark(gate.reconciliation("room"), log, "reconciled"))
    await _let_others_run()
    assert log == []
    await change.__aexit__(None, None, None)
    await asyncio.wait_for(reconciling, 1)
    assert log == ["reconciled"]


async def test_a_waiting_reconciliation_goes_before_changes_that_come_after_it() -> None:
    gate = ChannelGate()
    log: list[str] = []
    change = gate.change("room")
    await change.__aenter__()
    reconciling = asyncio.create_task(_mark(gate.reconciliation("room"), log, "reconciled"))
    await _let_others_run()
    later = asyncio.create_task(_mark(gate.change("room"), log, "changed"))
    await _let_others_run()
    assert log == []  # the later change waits behind the reconciliation
    await change.__aexit__(None, None, None)
    await asyncio.wait_for(asyncio.gather(reconciling, later), 1)
    assert log == ["reconciled", "changed"]


async def test_other_channels_are_not_held_by_a_reconciliation() -> None:
    gate = ChannelGate()
    async with gate.reconciliation("room"):
        await asyncio.wait_for(_hold(gate.change("elsewhere")), 1)


async def test_batches_and_reconciliations_over_overlapping_channels_never_deadlock() -> None:
    gate = ChannelGate()
    names = ["a", "b", "c", "d", "directory"]
    rng = random.Random(33)

    async def batch() -> None:
        async with gate.changes(rng.sample(names, 3)):
            await asyncio.sleep(0)

    async def reconcile() -> None:
        async with gate.reconciliation(*rng.sample(names, 2)):
            await asyncio.sleep(0)

    work = [batch() if rng.random() < 0.7 else reconcile() for _ in range(300)]
    await asyncio.wait_for(asyncio.gather(*work), 5)


async def _hold(context: AbstractAsyncContextManager[None]) -> None:
    async with context:
        pass


async def _mark(context: AbstractAsyncContextManager[None], log: list[str], what: str) -> None:
    async with context:
        log.append(what)


async def _let_others_run() -> None:
    # Every task ready to run gets to its next wait: the gate does no I/O, so a few turns
    # of the loop are enough, whatever the machine's load (no wall-clock time involved).
    for _ in range(10):
        await asyncio.sleep(0)
