"""Keeps a reconciliation from racing this worker's own joins and leaves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from contextlib import AbstractAsyncContextManager, asynccontextmanager


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

    def change(self, name: str) -> AbstractAsyncContextManager[None]:
        """Hold while a join or leave of ``name`` runs."""
        return self.changes((name,))

    @asynccontextmanager
    async def changes(self, names: Collection[str]) -> AsyncIterator[None]:
        """Hold while joins and leaves of ``names`` run (one batch): all are taken at once,
        so that a reconciliation of several of them never waits on this, nor this on it."""
        async with self._changed:
            if not self._exclusive.isdisjoint(names):
                await self._changed.wait_for(lambda: self._exclusive.isdisjoint(names))
            for name in names:
                self._active[name] = self._active.get(name, 0) + 1
        try:
            yield
        finally:
            async with self._changed:
                for name in names:
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
