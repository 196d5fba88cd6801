"""The checks a socket passes before its handshake is accepted and anything is registered:
cooling down after a flood, origin, channel id and resume position, authorization, user id
and presence metadata; and how a socket that fails one is refused."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.websockets import WebSocket

from ..errors import CloseCode, InvalidChannelError, PresenceMetadataError
from ..hub import PubSubHub
from .identity import checked_presence_metadata, checked_user_id
from .origins import origin_allowed
from .reading import close_reason

logger = logging.getLogger("fastapi_pubsub_cluster")


class Applicant(Protocol):
    """What the checks need of the socket (``BasePubSubWebSocket``) and its hooks."""

    websocket: WebSocket
    hub: PubSubHub
    channel_id: str
    resume_from: str | None
    user_id: str | None

    async def authorize(self) -> bool: ...

    async def get_user_id(self) -> str | None: ...

    async def presence_metadata(self) -> dict[str, Any] | None: ...

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None: ...


@dataclass(frozen=True, slots=True)
class Admission:
    """A socket that passed every check, and what it registers with."""

    #: Its presence metadata, checked (None: it gave none).
    metadata: dict[str, Any] | None


async def admit(socket: Applicant) -> Admission | None:
    """Run every check on ``socket``, in order, before its handshake is accepted; None
    when one failed (the socket is then closed and nothing is registered). Sets
    ``socket.user_id`` to the (checked) user id that :meth:`get_user_id` returns."""
    settings = socket.hub.settings
    if await _refused_while_cooling_down(socket):
        return None
    websocket = socket.websocket
    headers = websocket.headers
    if not origin_allowed(headers.get("origin"), headers.get("host"), settings.allowed_origins):
        logger.info("refused a socket from origin %r", headers.get("origin", "")[:100])
        await websocket.close()  # before accept: the client gets HTTP 403
        return None
    try:
        settings.validate_channel_id(socket.channel_id)
        if socket.resume_from is not None:
            settings.validate_stream_id(socket.resume_from)
    except InvalidChannelError as exc:
        logger.info("rejected a socket: %s", exc)
        await _refuse(socket, close_reason(str(exc)))
        return None
    if not await socket.authorize():
        logger.info("socket not authorized for channel %r", socket.channel_id)
        await _refuse(socket, "not authorized")
        return None
    try:
        socket.user_id = checked_user_id(await socket.get_user_id(), settings.max_channel_id_length)
        metadata = checked_presence_metadata(
            await socket.presence_metadata(), settings.max_presence_metadata_bytes
        )
    except PresenceMetadataError as exc:
        logger.info("rejected a socket: %s", exc)
        await _refuse(socket, close_reason(str(exc)))
        return None
    return Admission(metadata)


async def _refuse(socket: Applicant, reason: str) -> None:
    # Checked before accept; the handshake then completes only so that the client
    # receives a close code it can act on (1008) instead of a bare HTTP 403.
    await socket.websocket.accept()
    await socket.close(CloseCode.POLICY_VIOLATION, reason)


def _address(websocket: WebSocket) -> str | None:
    client = websocket.client
    return client.host if client is not None else None


async def _refused_while_cooling_down(socket: Applicant) -> bool:
    # Before anything is registered: a flooder that reconnects at once costs a handshake
    # and a close, not a join, a leave and their broadcasts. Closed with 1008 rather than
    # refused with an HTTP status, which browsers do not show to the page.
    hub = socket.hub
    wait = hub.inbound.cooling_down(_address(socket.websocket))
    if wait <= 0:
        return False
    hub.metrics.inbound_refused()
    logger.debug("refused %s: cooling down after flooding", _address(socket.websocket))
    await _refuse(socket, f"sending too fast: try again in {math.ceil(wait)} s")
    return True
