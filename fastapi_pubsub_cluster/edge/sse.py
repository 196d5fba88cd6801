"""Server-sent events: channels streamed as ``text/event-stream`` from the same fan-out,
for clients behind proxies that block WebSockets. Publishing stays on HTTP routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

from fastapi import HTTPException
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request

from ..core.backend import HistoryStore
from ..envelope import stream_id_order
from ..errors import InvalidChannelError, PubSubError, SubscriberOverflowError
from ..frames import OutgoingFrame, encode_json, history_gap_frame, stored_message_frame
from ..hub import PubSubHub
from .hubs import hub_for_socket

logger = logging.getLogger("fastapi_pubsub_cluster")

#: Seconds between heartbeats (SSE comments) on an idle stream, so that proxies keep it.
DEFAULT_PING = 15.0


class EventStream:
    """One client's stream of one or more channels as server-sent events. Subclass it to
    authorize (as :class:`BasePubSubWebSocket`), and return :meth:`response` from a GET
    route::

        class News(EventStream):
            async def authorize(self) -> bool:
                return self.request.headers.get("authorization") == "Bearer s3cret"

        @app.get("/events")
        async def events(
            request: Request, channel: Annotated[list[str], Query()]
        ) -> EventSourceResponse:
            return await News(request, channel).response()

    Each message is an event whose data is the JSON a tagged WebSocket client gets,
    ``{"channel": ..., "data": ...}`` (with ``"id"`` on history channels), encoded once
    per message for every client on the worker. The first event, ``welcome``, says the
    stream is live (``{"channels": [...]}``). On history channels each event's id is the
    stream position (one stream id per history channel, comma-separated, in the order
    given), so a reconnecting ``EventSource`` resumes with ``Last-Event-ID`` and gets
    exactly what it missed (after a ``gap`` event if history no longer reaches back).

    A stream is not a member of its channels (it does not count), like ``hub.subscribe``.
    At most ``max_queue`` messages (default ``send_queue_size``) wait for a client, and
    a write waits at most ``close_timeout``: a client that does not keep up is dropped
    (its ``EventSource`` reconnects and resumes).
    """

    def __init__(
        self,
        request: Request,
        channels: str | Sequence[str],
        *,
        hub: PubSubHub | None = None,
        ping: float = DEFAULT_PING,
        retry: int | None = None,
        max_queue: int | None = None,
    ) -> None:
        self.request = request
        #: The channels streamed, in the order given, each once.
        self.channels = list(dict.fromkeys([channels] if isinstance(channels, str) else channels))
        self.hub = hub if hub is not None else hub_for_socket(request.scope, None)
        #: Seconds between heartbeats on an idle stream.
        self.ping = ping
        #: Milliseconds an ``EventSource`` waits before it reconnects (its default: None).
        self.retry = retry
        self.max_queue = max_queue

    async def authorize(self) -> bool:
        """Override to decide whether this request may stream (read ``self.request``
        headers, query, cookies); False answers HTTP 403 and registers nothing."""
        return True

    async def authorize_join(self, channel: str) -> bool:
        """Override to decide whether this request may stream ``channel`` (called for
        each, after :meth:`authorize`); False answers HTTP 403 and registers nothing."""
        return True

    async def response(self) -> EventSourceResponse:
        """Check the request, then stream. Raises ``HTTPException``: 400 for invalid
        channels or resume position, 403 when not authorized, 503 when the hub cannot
        start (its backend does not answer)."""
        settings = self.hub.settings
        try:
            if not self.channels:
                raise InvalidChannelError("name at least one channel")
            if len(self.channels) > settings.max_channels_per_socket:
                raise InvalidChannelError(
                    f"at most {settings.max_channels_per_socket} channels per stream"
                )
            for channel in self.channels:
                settings.validate_channel_id(channel)
            resume = self._resume_positions()
        except InvalidChannelError as exc:
            logger.info("refused an event stream: %s", exc)
            raise HTTPException(400, str(exc)) from None
        if not await self.authorize() or not all(
            [await self.authorize_join(channel) for channel in self.channels]
        ):
            logger.info("event stream not authorized for %s", self.channels)
            raise HTTPException(403, "not authorized")
        try:
            await self.hub.start_on_first_use()
        except PubSubError as exc:
            logger.warning("event stream could not start: %s", exc)
            raise HTTPException(503, "pub/sub backend unavailable") from None
        return EventSourceResponse(
            self._events(resume), ping=self.ping, send_timeout=settings.close_timeout
        )

    @property
    def history_channels(self) -> list[str]:
        """The channels streamed that keep history, in order: what event ids hold."""
        return [c for c in self.channels if self.hub.settings.has_history(c)]

    def _resume_positions(self) -> dict[str, str]:
        # Last-Event-ID as EventSource sends it on reconnect (or ?last_event_id= for a
        # first connection): one stream id per history channel, "" for none yet.
        text = self.request.headers.get("last-event-id")
        if text is None:
            text = self.request.query_params.get("last_event_id")
        history = self.history_channels
        if not text or not history:
            return {}
        ids = text.split(",")
        if len(ids) != len(history):
            raise InvalidChannelError(
                f"Last-Event-ID holds {len(ids)} positions for {len(history)} history channels"
            )
        settings = self.hub.settings
        return {c: settings.validate_stream_id(i) for c, i in zip(history, ids, strict=True) if i}

    def _event_id(self, positions: dict[str, str]) -> str:
        return ",".join(positions.get(c, "") for c in self.history_channels)

    def _event(
        self, channel: str, frame: OutgoingFrame, positions: dict[str, str]
    ) -> ServerSentEvent:
        # The tagged frame and its JSON are cached on the shared frame: encoded once.
        text = frame.tagged(channel).text
        stream_id = frame.stream_id
        return ServerSentEvent(text, id=self._event_id(positions) if stream_id else None)

    async def _events(self, resume: dict[str, str]) -> AsyncIterator[ServerSentEvent]:
        hub = self.hub
        store = hub.backend.history_store
        history = self.history_channels
        subscribing = hub.subscription(self.channels, max_queue=self.max_queue, policy="error")
        async with subscribing as frames:
            positions = dict(resume)
            if store is not None:  # where each history channel is, once heard
                for channel in history:
                    if channel not in positions:
                        positions[channel] = await store.last_stored_id(channel)
            welcome = encode_json({"channels": self.channels})
            yield ServerSentEvent(
                welcome, event="welcome", id=self._event_id(positions) or None, retry=self.retry
            )
            if store is not None:
                async for event in self._replay(store, resume, positions):
                    yield event
            while True:
                try:
                    channel, frame = await frames.next_frame()
                except StopAsyncIteration:  # the hub stops
                    return
                except SubscriberOverflowError as exc:
                    logger.info("dropped an event stream: %s", exc)
                    hub.metrics.slow_client_disconnected()
                    return
                stream_id = frame.stream_id
                if stream_id is not None:
                    last = positions.get(channel)
                    if last is not None and stream_id_order(stream_id) <= stream_id_order(last):
                        continue  # replayed already, or older than where it started
                    positions[channel] = stream_id
                yield self._event(channel, frame, positions)

    async def _replay(
        self, store: HistoryStore, resume: dict[str, str], positions: dict[str, str]
    ) -> AsyncIterator[ServerSentEvent]:
        for channel, since in resume.items():
            stored = await store.history(channel, since)
            if not stored.complete:
                gap = history_gap_frame(since, stored.oldest).tagged(channel)
                yield ServerSentEvent(gap.text, event="gap")
            for stream_id, payload in stored.entries:
                positions[channel] = stream_id
                yield self._event(channel, stored_message_frame(stream_id, payload), positions)
