"""Reading a client's frames within the size and rate limits, until it disconnects."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.websockets import WebSocket

from ..core.client import ClientConnection, ConnectionState
from ..errors import CloseCode, MalformedMessageError, MessageTooLargeError
from ..hub import PubSubHub
from ..limits import InboundLimiter
from .inbound import decode_client_binary, decode_client_text

logger = logging.getLogger("fastapi_pubsub_cluster")

#: Called with each decoded client message.
MessageHandler = Callable[[ClientConnection, Any], Awaitable[None]]

_CONTENT_CLOSE_CODES = {
    MalformedMessageError: CloseCode.INVALID_PAYLOAD,
    MessageTooLargeError: CloseCode.MESSAGE_TOO_BIG,
}


async def read_until_disconnect(
    websocket: WebSocket, connection: ClientConnection, hub: PubSubHub, handle: MessageHandler
) -> int:
    """Hand each decoded client message to ``handle`` until the client disconnects or is
    closed for what it sent (too big, too fast, malformed, or a handler error); returns
    the close code."""
    client = websocket.client
    address = client.host if client is not None else None
    inbound = hub.inbound.limiter(address)
    try:
        return await _read_within_limits(websocket, connection, hub, inbound, handle)
    finally:
        # Under "disconnect", the first message over a rate closes the socket.
        hub.inbound.release(address, inbound, flooded=inbound.limited > 0)


async def _read_within_limits(
    websocket: WebSocket,
    connection: ClientConnection,
    hub: PubSubHub,
    inbound: InboundLimiter,
    handle: MessageHandler,
) -> int:
    settings = hub.settings
    metrics = hub.metrics
    limit = settings.max_message_bytes
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return int(message.get("code") or CloseCode.NORMAL)
        text: str | None = message.get("text")
        raw: bytes | None = message.get("bytes")
        size = len(text.encode()) if text is not None else len(raw or b"")
        if size > limit:
            logger.info("client %s sent %d bytes (limit %d)", connection.id, size, limit)
            await connection.close(CloseCode.MESSAGE_TOO_BIG, f"message over {limit} bytes")
            return CloseCode.MESSAGE_TOO_BIG
        if settings.inbound_rate_policy == "throttle":
            delay = inbound.delay(size)
            if delay > 0:
                # Not reading meanwhile: the server's buffers fill and TCP slows the
                # sender, instead of this worker parsing frames only to refuse them.
                metrics.inbound_limited()
                if inbound.limited == 0:
                    logger.info("client %s over its inbound rate: throttling", connection.id)
                await asyncio.sleep(delay)
                if connection.state is not ConnectionState.OPEN:
                    # Closed or lost meanwhile (a failed write tells): what the server
                    # had read ahead from it is not worth relaying at its rate.
                    return CloseCode.GOING_AWAY
            inbound.take(size, limited=delay > 0)
        elif not inbound.admit(size):
            metrics.inbound_limited()
            if settings.inbound_rate_policy == "drop":
                if inbound.limited == 1:  # once per client: a flood must not flood the log
                    logger.info("client %s over its inbound rate: dropping", connection.id)
                continue
            logger.info("client %s over its inbound rate: closing", connection.id)
            await connection.close(CloseCode.POLICY_VIOLATION, "sending too fast")
            return CloseCode.POLICY_VIOLATION
        try:
            data = (
                decode_client_text(text) if text is not None else decode_client_binary(raw or b"")
            )
        except MalformedMessageError as exc:
            logger.info("client %s sent a malformed frame: %s", connection.id, exc)
            await connection.close(CloseCode.INVALID_PAYLOAD, close_reason(str(exc)))
            return CloseCode.INVALID_PAYLOAD
        try:
            await handle(connection, data)
        except (MalformedMessageError, MessageTooLargeError) as exc:
            # What the client sent cannot be relayed: its fault, not the server's.
            code = _CONTENT_CLOSE_CODES[type(exc)]
            logger.info("client %s: its message could not be published: %s", connection.id, exc)
            await connection.close(code, close_reason(str(exc)))
            return code
        except Exception:
            logger.exception("handling a message of client %s failed", connection.id)
            await connection.close(CloseCode.INTERNAL_ERROR, "internal error")
            return CloseCode.INTERNAL_ERROR


def close_reason(text: str) -> str:
    """``text`` cut to fit a close frame (123 bytes of UTF-8)."""
    return text.encode()[:120].decode(errors="ignore")
