"""Single-process backend: presence, publishing and history without any network."""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack  # type: ignore[import-untyped]

from ..core.backend import ChannelLoaded, FanOutSink, HistorySlice, new_worker_id
from ..envelope import Envelope, EventKind, encode_payload, stream_id_order
from ..errors import HubClosedError
from ..membership import membership_payload
from ..settings import PubSubSettings


class MemoryBackend:
    """The default backend: everything stays in this process.

    One object keeps the three contracts (transport, presence store, history store).
    Envelopes go straight back to the core through the same door a Redis backend uses,
    so both share one receive path. With several workers each would have its own view:
    use :class:`~fastapi_pubsub_cluster.backends.redis.RedisBackend` there.
    """

    def __init__(self, settings: PubSubSettings) -> None:
        self.settings = settings
        self.worker_id = new_worker_id()
        self._sink: FanOutSink | None = None
        self._members: dict[str, set[str]] = {}
        # Never restarts: a channel's events keep their order across emptying.
        self._seq: dict[str, int] = {}
        self._histories: dict[str, LocalHistory] = {}
        self._metadata: dict[str, dict[str, Any]] = {}
        self._users: dict[str, set[str]] = {}
        self._user_of: dict[str, str] = {}

    @property
    def transport(self) -> MemoryBackend:
        """This object: envelopes loop back to the core."""
        return self

    @property
    def presence_store(self) -> MemoryBackend:
        """This object: presence in dicts."""
        return self

    @property
    def history_store(self) -> MemoryBackend:
        """This object: the last messages of each history channel."""
        return self

    async def start(self, sink: FanOutSink) -> None:
        """Take the core's door; nothing to open."""
        self._sink = sink

    async def stop(self) -> None:
        """Forget presence (no other worker can see it anyway)."""
        self._sink = None
        self._members.clear()
        self._metadata.clear()
        self._users.clear()
        self._user_of.clear()

    def _door(self) -> FanOutSink:
        if self._sink is None:
            raise HubClosedError("the in-memory backend is not started")
        return self._sink

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
        """Add a connection (to its user, with its metadata) and announce it."""
        sink = self._door()
        if directory and user_id is not None:
            self._users.setdefault(user_id, set()).add(connection_id)
            self._user_of[connection_id] = user_id
        members = self._members.setdefault(channel, set())
        if connection_id not in members:
            members.add(connection_id)
            if metadata is not None:
                self._metadata.setdefault(channel, {})[connection_id] = dict(metadata)
            self._announce(sink, EventKind.JOIN, channel, connection_id, notify, metadata)

    async def leave(
        self, channel: str, connection_id: str, *, notify: bool, directory: bool = True
    ) -> None:
        """Remove a connection and announce it; does nothing after :meth:`stop`."""
        sink = self._sink
        members = self._members.get(channel)
        user_id = self._user_of.pop(connection_id, None) if directory else None
        if user_id is not None:
            of_user = self._users.get(user_id, set())
            of_user.discard(connection_id)
            if not of_user:
                self._users.pop(user_id, None)
        if sink is None or members is None or connection_id not in members:
            return
        members.discard(connection_id)
        metadata = self._metadata.get(channel, {}).pop(connection_id, None)
        self._announce(sink, EventKind.LEAVE, channel, connection_id, notify, metadata)
        if not members:
            del self._members[channel]
            self._metadata.pop(channel, None)

    def _announce(
        self,
        sink: FanOutSink,
        kind: EventKind,
        channel: str,
        connection_id: str,
        notify: bool,
        metadata: Mapping[str, Any] | None,
    ) -> None:
        seq = self._seq[channel] = self._seq.get(channel, 0) + 1
        payload = membership_payload(notify, metadata)
        sink.receive(Envelope(kind, channel, self.worker_id, connection_id, seq, payload))

    async def publish(self, channel: str, payload: Any, *, exclude: str | None = None) -> None:
        """Deliver ``payload`` to the channel's clients in this process (but ``exclude``)."""
        sink = self._door()
        # Check encodability and size once, as the Redis backend does before PUBLISH, and
        # hand on a copy, as Redis does: the caller may change its object afterwards.
        encoded = encode_payload(payload)
        self.settings.check_message_size(len(encoded))
        payload = msgpack.unpackb(encoded, raw=False, strict_map_key=False)
        sent_at = time.time()
        if self.settings.has_history(channel):
            history = self._histories.get(channel)
            if history is None:
                history = LocalHistory(self.settings.history_size, self.settings.history_ttl)
                self._histories[channel] = history
            stream_id = history.append(payload)
            sink.receive(
                Envelope(
                    EventKind.STORED,
                    channel,
                    self.worker_id,
                    stream_id,
                    0,
                    payload,
                    sent_at,
                    exclude,
                )
            )
            return
        publication_id = uuid.uuid4().hex
        sink.receive(
            Envelope(
                EventKind.MESSAGE,
                channel,
                self.worker_id,
                publication_id,
                0,
                payload,
                sent_at,
                exclude,
            )
        )

    async def send(self, worker_id: str, connection_ids: Sequence[str], payload: Any) -> int:
        """No other worker exists: nothing to send to."""
        self._door()
        return 0

    async def user_connections(self, user_id: str) -> frozenset[str]:
        """Ids of ``user_id``'s connections."""
        return frozenset(self._users.get(user_id, ()))

    async def follow(self, channel: str) -> None:
        """Nothing to subscribe (every envelope comes back through the door): report the
        channel's members as of its last membership event."""
        metadata = self._metadata.get(channel, {})
        members = frozenset(self._members.get(channel, ()))
        loaded = ChannelLoaded(channel, members, self._seq.get(channel, 0), dict(metadata))
        self._door().receive(loaded)

    async def unfollow(self, channel: str) -> None:
        """Nothing to unsubscribe."""

    async def presence(self, channel: str) -> dict[str, Any]:
        """Connection id -> presence metadata (None without) in ``channel``."""
        metadata = self._metadata.get(channel, {})
        return {cid: metadata.get(cid) for cid in self._members.get(channel, ())}

    async def members(self, channel: str) -> frozenset[str]:
        """Connection ids in ``channel``."""
        return frozenset(self._members.get(channel, ()))

    async def history(self, channel: str, since: str) -> HistorySlice:
        """What ``channel`` stored after ``since``."""
        history = self._histories.get(channel)
        if history is None:
            return HistorySlice([], None, True)
        return history.after(since)

    async def last_stored_id(self, channel: str) -> str:
        """The id of the newest message ``channel`` stored ("0-0" if none)."""
        history = self._histories.get(channel)
        return history.last_id() if history is not None else "0-0"


class LocalHistory:
    """The last ``size`` messages of one channel, with stream-style ids ``<ms>-<seq>`` and
    the same trimming rules as a Redis stream."""

    def __init__(self, size: int, ttl: float) -> None:
        self._entries: deque[tuple[str, Any]] = deque()
        self._size = size
        self._ttl = ttl
        self._last = (0, 0)
        self._max_deleted: tuple[int, int] | None = None
        self._touched = time.monotonic()

    def append(self, payload: Any) -> str:
        """Store ``payload`` and return its id."""
        self._expire_if_idle()
        now_ms = int(time.time() * 1000)
        ms, seq = self._last
        self._last = (now_ms, 0) if now_ms > ms else (ms, seq + 1)
        stream_id = f"{self._last[0]}-{self._last[1]}"
        self._entries.append((stream_id, payload))
        if len(self._entries) > self._size:
            trimmed_id, _ = self._entries.popleft()
            self._max_deleted = stream_id_order(trimmed_id)
        self._touched = time.monotonic()
        return stream_id

    def last_id(self) -> str:
        """The newest id kept ("0-0" if none)."""
        self._expire_if_idle()
        return self._entries[-1][0] if self._entries else "0-0"

    def after(self, since: str) -> HistorySlice:
        """Entries after ``since``, the oldest id kept, and whether nothing after ``since``
        was trimmed away."""
        self._expire_if_idle()
        cutoff = stream_id_order(since)
        entries = [entry for entry in self._entries if stream_id_order(entry[0]) > cutoff]
        oldest = self._entries[0][0] if self._entries else None
        complete = self._max_deleted is None or self._max_deleted <= cutoff
        return HistorySlice(entries, oldest, complete)

    def _expire_if_idle(self) -> None:
        if self._entries and time.monotonic() - self._touched > self._ttl:
            self._max_deleted = stream_id_order(self._entries[-1][0])
            self._entries.clear()
