"""A client's requests to join or leave further channels (``{"join": c}``, ``{"leave": c}``),
for socket classes that set ``client_joins``."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from ..core.client import ClientConnection, ConnectionState
from ..errors import (
    BackendUnavailableError,
    ChannelLimitError,
    InvalidChannelError,
    NotJoinedError,
)
from ..frames import event_frame
from ..settings import PubSubSettings

logger = logging.getLogger("fastapi_pubsub_cluster")

_EXPECTED = 'expected {"join": channel} (with "since": id) or {"leave": channel}'


class ChannelRequestTarget(Protocol):
    """What answering a request needs of the socket (``BasePubSubWebSocket``)."""

    connection_id: str

    async def authorize_join(self, channel: str) -> bool: ...

    async def join(self, channel: str, *, since: str | None = None) -> bool: ...

    async def leave(self, channel: str) -> bool: ...


def is_channel_request(data: Any) -> bool:
    """True for a client message that asks to join or leave a channel."""
    return isinstance(data, dict) and ("join" in data or "leave" in data)


async def answer_channel_request(
    socket: ChannelRequestTarget,
    connection: ClientConnection,
    data: dict[str, Any],
    settings: PubSubSettings,
) -> None:
    """Join or leave as asked; the client is answered ``joined``/``left``, or ``refused``
    with the reason, and the socket stays open either way."""
    action = "join" if "join" in data else "leave"
    channel = data[action]
    since = data.get("since")
    allowed = {"join", "since"} if action == "join" else {"leave"}
    # Echoed as asked, so that the client can tell which of its requests this answers.
    label = channel if isinstance(channel, str) else ""
    reason: str | None = None
    retry = False
    if not isinstance(channel, str) or data.keys() - allowed or not _optional_str(since):
        reason = _EXPECTED
    else:
        try:
            if action == "leave":
                if not await socket.leave(channel):
                    connection.send_event(event_frame("left", channel))  # idempotent
            else:
                settings.validate_channel_id(channel)  # before the app's hook sees it
                if not await socket.authorize_join(channel):
                    reason = "not authorized"
                else:
                    await socket.join(channel, since=since)
        except (InvalidChannelError, ChannelLimitError, NotJoinedError) as exc:
            reason = str(exc)
        except BackendUnavailableError as exc:
            logger.warning("socket %s could not join %r: %s", socket.connection_id, label, exc)
            reason = f"pub/sub backend unavailable ({exc}); try again"
            retry = True
    if reason is not None:
        # A socket already closing asks nothing of anyone: not worth an operator's attention.
        level = logging.INFO if connection.state is ConnectionState.OPEN else logging.DEBUG
        logger.log(
            level, "refused %s of %r by %s: %s", action, label[:200], socket.connection_id, reason
        )
        extra: dict[str, Any] = {"retry": True} if retry else {}
        connection.send_event(event_frame("refused", label, reason=reason, **extra))


def _optional_str(value: Any) -> bool:
    return value is None or isinstance(value, str)
