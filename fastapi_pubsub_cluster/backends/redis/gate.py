"""Keeps a reconciliation from racing this worker's own joins and leaves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class ChannelGate:
    """Per name (a channel, or the directory): changes run side by side, a reconciliation
    runs alone.

    A reconciliation reads the local truth, then changes Redis; a leave whose script ran
    between the two would be undone (the entry registered again, and left behind until the
    next reconciliation). So a reconciliation waits for the changes in flight, and new ones
    wait for it; it goes first once it waits, so that churn cannot starve it.
    """

    def __init__(self) -> None:
        self._active: dict[str, int] = {}
        self._exclusive: set[str] = set()
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def change(self, name: str) -> AsyncIterator[None]:
        """Hold while a join or leave of ``name`` runs."""
        async with self._changed:
            if name in self._exclusive:
                await self._changed.wait_for(lambda: name not in self._exclusive)
            self._active[name] = self._active.get(name, 0) + 1
        try:
            yield
        finally:
            async with self._changed:
                left = self._active[name] - 1
                if left:
                    self._active[name] = left
                else:
                    del self._active[name]
                    self._changed.notify_all()

    @asynccontextmanager
    async def reconciliation(self, *names: str) -> AsyncIterator[None]:
        """Hold while ``names`` are reconciled: alone, after the changes in flight. All are
        taken at once, so that two reconciliations of several names never wait on each
        other."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._exclusive.isdisjoint(names))
            self._exclusive.update(names)
            await self._changed.wait_for(lambda: self._active.keys().isdisjoint(names))
        try:
            yield
        finally:
            async with self._changed:
                self._exclusive.difference_update(names)
                self._changed.notify_all()
