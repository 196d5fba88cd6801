"""The client's bounded inbox of events, and the answers its joins and leaves wait for."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Literal

from .events import ClientError, Direct, Event, Gap, Message

_END = object()  # wakes a reader once the client is done
#: What the inbox keeps whatever it costs (the client waits); other events are notifications.
_WAITED_ON = (Message, Gap, Direct)


class Inbox:
    """Events in arrival order, at most ``size`` of them. Messages, gaps and direct sends
    wait for room (the client stops reading its socket meanwhile: the push back);
    notifications (presence, opens, closes, joins) are dropped when it is full, so that
    reconnecting never waits on a reader that is behind."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("max_queue must be at least 1")
        self._queue: asyncio.Queue[Event | object] = asyncio.Queue(size)
        self._error: ClientError | None = None

    async def put(self, event: Event) -> None:
        if isinstance(event, _WAITED_ON):
            await self._queue.put(event)
        else:
            self._offer(event)

    def end(self, error: ClientError) -> None:
        """No more events: once the rest is read, readers get ``error``."""
        if self._error is None:
            self._error = error
            self._offer(_END)

    async def get(self) -> Event:
        if self._error is not None and self._queue.empty():
            raise self._error
        item = await self._queue.get()
        if item is _END:
            self._offer(_END)  # for any other reader
            raise self._error or ClientError("the client is done")
        event: Event = item  # type: ignore[assignment]
        return event

    def _offer(self, item: Event | object) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(item)


@dataclass(slots=True)
class _Pending:
    channel: str
    kind: Literal["join", "leave"]
    answer: asyncio.Future[None]


class Answers:
    """Joins and leaves waiting for the server's answer."""

    def __init__(self) -> None:
        self._pending: list[_Pending] = []

    def expect(self, channel: str, kind: Literal["join", "leave"]) -> asyncio.Future[None]:
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(channel, kind, answer))
        return answer

    def settle(
        self,
        error: BaseException | None = None,
        *,
        channel: str | None = None,
        kind: Literal["join", "leave"] | None = None,
    ) -> None:
        """Resolve (or fail with ``error``) those of ``channel`` and ``kind`` (None: any)."""
        keep: list[_Pending] = []
        for pending in self._pending:
            if channel not in (None, pending.channel) or kind not in (None, pending.kind):
                keep.append(pending)
            elif not pending.answer.done():
                if error is None:
                    pending.answer.set_result(None)
                else:
                    pending.answer.set_exception(error)
        self._pending = keep
