"""Messages of channels with history: delivered once, in order, and replayed after a gap;
and the whole resync after a lost link."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from ..envelope import stream_id_order
from ..errors import CloseCode, ConfigurationError
from ..frames import OutgoingFrame, history_gap_frame, stored_message_frame
from ..metrics import Metrics
from ..settings import PubSubSettings
from .backend import HistorySlice, HistoryStore
from .client import ClientConnection
from .regeneration import HOOK_TIMEOUT, Regenerator

logger = logging.getLogger("fastapi_pubsub_cluster")

#: An application's coroutine function, called after a lost link comes back.
ReconnectHook = Callable[[], Awaitable[None]]


class StoredDelivery:
    """Delivers stored messages at most once each, in stream order, per channel.

    The newest stored message delivered per channel is remembered: replays start there, and
    older or repeated ids are never delivered twice. While a channel replays what a lost link
    missed, its live stored messages wait, so that none overtakes the replay (or moves its
    start).
    """

    def __init__(
        self,
        history: HistoryStore | None,
        settings: PubSubSettings,
        deliver: Callable[[str, OutgoingFrame, float, str | None], int],
        feed: Callable[[str, OutgoingFrame], None],
    ) -> None:
        self._history = history
        self._settings = settings
        self._deliver = deliver
        self._feed = feed
        self._last: dict[str, str] = {}
        #: Per channel, where the first socket's replay ended: a lost link's replay starts
        #: there while nothing newer was delivered.
        self._start: dict[str, str] = {}
        self._held: dict[str, list[tuple[str, Any, float, str | None]]] = {}

    def _store(self) -> HistoryStore:
        if self._history is None:  # the hub refuses history channels without a store
            raise ConfigurationError("this backend keeps no history")
        return self._history

    def deliver(
        self,
        channel: str,
        stream_id: str,
        payload: Any,
        sent_at: float,
        exclude: str | None = None,
    ) -> None:
        """Deliver a stored message to sockets (but ``exclude``) and subscribers, unless it
        is not newer than the last one delivered; held while the channel replays."""
        held = self._held.get(channel)
        if held is not None:
            held.append((stream_id, payload, sent_at, exclude))
            return
        self._deliver_now(channel, stream_id, payload, sent_at, exclude)

    def _deliver_now(
        self, channel: str, stream_id: str, payload: Any, sent_at: float, exclude: str | None
    ) -> None:
        last = self._last.get(channel)
        if last is not None and stream_id_order(stream_id) <= stream_id_order(last):
            return  # already delivered (a replay, or heard twice)
        self._last[channel] = stream_id
        frame = stored_message_frame(stream_id, payload)
        self._deliver(channel, frame, sent_at, exclude)
        self._feed(channel, frame)

    def hold(self, channels: Sequence[str]) -> None:
        """A lost link is back: hold live stored messages of ``channels`` until
        :meth:`replay_missed` has run (call it before the link reads again)."""
        for channel in channels:
            if channel in self._last or channel in self._start:
                self._held.setdefault(channel, [])

    def lacks_start(self, channel: str) -> bool:
        """True for a history channel this worker has no replay start for yet (nothing
        delivered, no socket's replay read): the next joining socket reads one."""
        return (
            self._settings.has_history(channel)
            and channel not in self._last
            and channel not in self._start
        )

    def forget(self, channel: str) -> None:
        """``channel`` is no longer heard."""
        self._last.pop(channel, None)
        self._start.pop(channel, None)
        self._held.pop(channel, None)

    def clear(self) -> None:
        """Forget every channel."""
        self._last.clear()
        self._start.clear()
        self._held.clear()

    async def resume_point(self, channel: str, since: str | None) -> str | None:
        """Where a connection joining ``channel`` starts: ``since`` if the client gave one,
        else on a history channel the newest stored id. Read before the connection is
        registered and replayed from after: nothing stored in between is missed."""
        if since is not None or not self._settings.has_history(channel):
            return since
        return await self._store().last_stored_id(channel)

    async def replay_frames(
        self, channel: str, since: str, *, report_gap: bool = True, tagged: bool = False
    ) -> tuple[list[OutgoingFrame], str | None]:
        """What ``channel`` stored after ``since`` (after a gap frame if history no longer
        reaches back that far, unless not ``report_gap``: a start the server chose), as
        ``tagged`` clients get it or not, and the stream id the replay reaches (None: no
        history)."""
        if not self._settings.has_history(channel):
            frames = [history_gap_frame(since, None)]
            replayed_to = None
        else:
            stored = await self._store().history(channel, since)
            gap = report_gap and not stored.complete
            frames = [history_gap_frame(since, stored.oldest)] if gap else []
            frames.extend(
                stored_message_frame(stream_id, payload) for stream_id, payload in stored.entries
            )
            replayed_to = stored.entries[-1][0] if stored.entries else since
            if channel not in self._start:
                self._start[channel] = await self._start_after(channel, stored, since, report_gap)
        if tagged:
            frames = [frame.tagged(channel) for frame in frames]
        return frames, replayed_to

    async def _start_after(
        self, channel: str, stored: HistorySlice, since: str, client_chose: bool
    ) -> str:
        """Where this worker's replays of ``channel`` start after the first socket's: an
        id the stream gave, or the server's own start, never a client's word (a client
        may name an id from the future, which would hide what others miss)."""
        if stored.entries:
            return stored.entries[-1][0]
        if not client_chose:
            return since
        return await self._store().last_stored_id(channel)

    async def replay_missed(self, channel: str) -> None:
        """Deliver what ``channel`` stored after the last message delivered (a lost link),
        after a gap frame if the history no longer reaches back there (Redis lost or
        trimmed it), then what was held meanwhile (newer ones only), even if the replay
        failed (which raises)."""
        try:
            last = self._last.get(channel) or self._start.get(channel)
            if last is None or not self._settings.has_history(channel):
                return
            stored = await self._store().history(channel, last)
            if not stored.complete:
                logger.warning("history of %r no longer reaches back to %s", channel, last)
                self._deliver(channel, history_gap_frame(last, stored.oldest), 0.0, None)
            for stream_id, payload in stored.entries:
                self._deliver_now(channel, stream_id, payload, 0.0, None)
            if stored.entries:
                logger.info("replayed %d missed messages on %r", len(stored.entries), channel)
        finally:
            for stream_id, payload, sent_at, exclude in self._held.pop(channel, []):
                self._deliver_now(channel, stream_id, payload, sent_at, exclude)


async def resync(
    channels: Sequence[str],
    *,
    stored: StoredDelivery,
    regenerator: Regenerator,
    hooks: Sequence[ReconnectHook],
    connections: Callable[[str], list[ClientConnection]],
    settings: PubSubSettings,
    metrics: Metrics,
) -> None:
    """After a lost link: replay what history channels stored in the gap, regenerate, and
    tell the app (its reconnect hooks, then each socket's ``on_reconnect``, or close the
    sockets with 1012 if ``close_clients_on_reconnect``). Sockets of a channel whose
    replay failed are closed with 1012 in any case: resuming is how they get what they
    missed."""
    metrics.redis_reconnected()
    unreplayed: list[str] = []
    for channel in channels:
        try:
            await stored.replay_missed(channel)
        except Exception as exc:
            logger.warning("could not replay missed messages on %r: %r", channel, exc)
            unreplayed.append(channel)
        regenerator.schedule(channel)
    # Concurrently: one slow hook must not hold up the others.
    await asyncio.gather(*(run_hook(h(), "reconnect hook") for h in hooks))
    # Each socket once, however many of these channels it is in.
    behind = {c.id: c for channel in unreplayed for c in connections(channel)}
    await close_all(behind.values(), "could not replay what the lost link missed; resume")
    conns = [
        c
        for c in {c.id: c for channel in channels for c in connections(channel)}.values()
        if c.id not in behind
    ]
    if settings.close_clients_on_reconnect:
        await close_all(conns, "pub/sub link was lost; reconnect to resync")
        return
    await asyncio.gather(*(run_hook(c.hooks.on_reconnect(), "on_reconnect") for c in conns))


async def close_all(conns: Iterable[ClientConnection], reason: str) -> None:
    """Close ``conns`` with 1012 (service restart): their clients reconnect and resume."""
    await asyncio.gather(
        *(c.close(CloseCode.SERVICE_RESTART, reason) for c in conns), return_exceptions=True
    )


async def run_hook(call: Awaitable[None], what: str) -> None:
    """Await an application hook within its time limit; its failure is logged only."""
    try:
        async with asyncio.timeout(HOOK_TIMEOUT):
            await call
    except Exception:
        logger.exception("%s failed", what)
