"""Server-side subscribers: Python code that reads a channel's messages, bounded like a
client socket."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

from ..errors import SubscriberOverflowError
from ..frames import OutgoingFrame
from ..tasks import TaskSupervisor

logger = logging.getLogger("fastapi_pubsub_cluster")

#: ``"drop_oldest"`` drops the oldest queued message (counted in ``dropped``) when the queue
#: is full; ``"error"`` ends the iteration with :class:`SubscriberOverflowError`.
SubscriberPolicy = Literal["drop_oldest", "error"]


class Subscription:
    """The messages published on one channel after it was subscribed, as an async iterator.

    Fan-out hands each message over without waiting (:meth:`offer`): at most ``max_queue``
    wait here, and beyond that the policy applies to this subscriber alone. On channels with
    history, each message is ``{"id": ..., "data": ...}``, as clients receive it. The
    iteration ends when the ``async with`` block is left or the hub stops.

    A subscription may cover several channels (the server-sent event streams'): then
    :meth:`next_frame` says which channel each frame came from.
    """

    __slots__ = (
        "_closed",
        "_overflowed",
        "_queue",
        "_wakeup",
        "channel",
        "channels",
        "dropped",
        "max_queue",
        "policy",
    )

    def __init__(
        self, channels: str | Sequence[str], max_queue: int, policy: SubscriberPolicy
    ) -> None:
        self.channels = (channels,) if isinstance(channels, str) else tuple(channels)
        self.channel = self.channels[0]
        self.max_queue = max_queue
        self.policy: SubscriberPolicy = policy
        #: Messages dropped because the subscriber did not keep up (``drop_oldest``).
        self.dropped = 0
        # Frames as fan-out shares them: each encoded once for every reader.
        self._queue: deque[tuple[str, OutgoingFrame]] = deque()
        self._wakeup = asyncio.Event()
        self._closed = False
        self._overflowed = False

    @property
    def pending(self) -> int:
        """Messages waiting to be read."""
        return len(self._queue)

    def offer(self, channel: str, frame: OutgoingFrame) -> None:
        """Queue ``frame`` of ``channel`` without waiting; the policy applies if the queue
        is full."""
        if self._closed or self._overflowed:
            return
        queue = self._queue
        if len(queue) >= self.max_queue:
            if self.policy == "error":
                self._overflowed = True
                queue.clear()
                self._wakeup.set()
                return
            queue.popleft()
            self.dropped += 1
        queue.append((channel, frame))
        self._wakeup.set()

    def close(self) -> None:
        """End the iteration once what is queued was read."""
        self._closed = True
        self._wakeup.set()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Any:
        return (await self.next_frame())[1].payload

    async def next_frame(self) -> tuple[str, OutgoingFrame]:
        """The next message's channel and frame (shared with every other reader: read
        its encodings, never change it); raises StopAsyncIteration when it ends."""
        while not self._queue:
            if self._overflowed:
                raise SubscriberOverflowError(
                    f"server-side subscriber of {self.channel!r} fell {self.max_queue} "
                    "messages behind"
                )
            if self._closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._queue.popleft()


class Subscribers:
    """This worker's server-side subscribers, by channel.

    ``update_following(channel)`` follows a channel while anything here listens to it
    (:meth:`listens`, or local sockets); ``unfollow_if_unused(channel)`` unfollows it once
    nothing does, and never raises.
    """

    def __init__(
        self,
        update_following: Callable[[str], Coroutine[Any, Any, None]],
        unfollow_if_unused: Callable[[str], Coroutine[Any, Any, None]],
        tasks: TaskSupervisor,
    ) -> None:
        self._update_following = update_following
        self._unfollow_if_unused = unfollow_if_unused
        self._tasks = tasks
        self._channels: dict[str, set[Subscription]] = {}

    def listens(self, channel: str) -> bool:
        """True while ``channel`` has a subscriber here."""
        return channel in self._channels

    def feed(self, channel: str, frame: OutgoingFrame) -> None:
        """Offer ``frame`` to ``channel``'s subscribers (never waits)."""
        subscribers = self._channels.get(channel)
        if subscribers:
            for subscription in list(subscribers):
                subscription.offer(channel, frame)

    def close_all(self) -> None:
        """End every subscriber's iteration (the hub stops)."""
        for subscribers in self._channels.values():
            for subscription in subscribers:
                subscription.close()  # (several times, for several channels: harmless)
        self._channels.clear()

    @asynccontextmanager
    async def subscribe(
        self, channels: str | Sequence[str], max_queue: int, policy: SubscriberPolicy
    ) -> AsyncIterator[Subscription]:
        """A :class:`Subscription` of ``channels`` while the block runs."""
        subscription = Subscription(channels, max_queue, policy)
        # Registered before any await, so that the decision to follow a channel sees it.
        for channel in subscription.channels:
            self._channels.setdefault(channel, set()).add(subscription)
        try:
            for channel in subscription.channels:
                await self._update_following(channel)
            yield subscription
        finally:
            subscription.close()
            for channel in subscription.channels:
                subscribers = self._channels.get(channel)
                if subscribers is not None:
                    subscribers.discard(subscription)
                    if not subscribers:
                        del self._channels[channel]
            # Tasks of the core's: they complete even when the caller is cancelled.
            await asyncio.shield(
                asyncio.gather(
                    *(
                        self._tasks.spawn(self._unfollow_if_unused(c), name=f"pubsub-unfollow-{c}")
                        for c in subscription.channels
                    )
                )
            )
