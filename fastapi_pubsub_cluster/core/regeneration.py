"""Running ``generate_object_to_send`` after membership events, once per burst."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..frames import OutgoingFrame
from ..tasks import TaskSupervisor
from .registry import LocalRegistry

logger = logging.getLogger("fastapi_pubsub_cluster")

#: Seconds an application hook (generate_object_to_send, on_reconnect) may run.
HOOK_TIMEOUT = 30.0


class Regenerator:
    """Runs a channel's ``generate_object_to_send`` for this worker's sockets.

    One run at a time per channel, so that an older result can never overtake a newer
    one; events during a run coalesce into one more run, which starts after the last of
    them. Runs are at least ``interval`` seconds apart: the first event after a quiet
    period runs at once, a burst of events (a storm of joins) runs once per interval, and
    the last run always follows the last event; so each client gets a number of count
    frames bounded by the burst's duration, not by its size. The newest local socket of
    the channel speaks for it. Tagged clients are told the channel's count first (a
    ``presence`` event).
    """

    def __init__(
        self,
        registry: LocalRegistry,
        deliver: Callable[[str, OutgoingFrame], object],
        tasks: TaskSupervisor,
        *,
        announce: Callable[[str], None],
        interval: float = 0.0,
    ) -> None:
        self._registry = registry
        self._interval = interval
        self._deliver = deliver
        self._announce = announce
        self._tasks = tasks
        self._dirty: set[str] = set()
        self._running: dict[str, asyncio.Task[None]] = {}

    def schedule(self, channel: str) -> None:
        """Regenerate ``channel`` (if it has local sockets) after what happened so far."""
        if channel not in self._registry:
            return
        self._dirty.add(channel)
        if channel not in self._running:
            self._running[channel] = self._tasks.spawn(
                self._run(channel), name=f"pubsub-regenerate-{channel}"
            )

    async def _run(self, channel: str) -> None:
        try:
            while channel in self._dirty:
                self._dirty.discard(channel)
                speaker = self._registry.newest(channel)
                if speaker is None:
                    break
                # A failure of one step (an encoding, a hook) stops neither the other step
                # nor later runs: both isolate each client's failure too.
                try:
                    self._announce(channel)
                except Exception:
                    logger.exception("presence event on channel %r failed", channel)
                try:
                    async with asyncio.timeout(HOOK_TIMEOUT):
                        payload = await speaker.hooks.generate_object_for(channel)
                except Exception:
                    logger.exception("generate_object_to_send failed for channel %r", channel)
                    payload = None
                if payload is not None:
                    try:
                        self._deliver(channel, OutgoingFrame(payload, state=f"data:{channel}"))
                    except Exception:
                        logger.exception("delivery on channel %r failed", channel)
                if self._interval:
                    await asyncio.sleep(self._interval)  # events meanwhile: one more run
        finally:
            self._dirty.discard(channel)
            self._running.pop(channel, None)
