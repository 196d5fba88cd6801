"""Driving one ASGI send by hand: started in the caller's task, finished by a writer task
only when it has to wait; and what a connection says when it cannot be cut off."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Coroutine
from typing import Any, cast

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

logger = logging.getLogger("fastapi_pubsub_cluster")

#: A send that had to wait, and the future it waits on (None: a bare yield).
SuspendedSend = tuple[Coroutine[Any, Any, None], Any]

# The warning that a stuck client cannot be cut off is given once per process.
_ABORT_WARNED = False


#: An ASGI ``send`` callable (an ``async def``, as servers and middleware define it).
AsgiSend = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]


def server_send(websocket: WebSocket) -> AsgiSend:
    """The ASGI ``send`` the server gave ``websocket``, for the frames of an open socket.

    Starlette's ``WebSocket.send`` only checks its state machine before calling it (about
    7% of a delivery's CPU on plain ASGI); an open socket's frames need no such check, and
    a server refuses a send after close itself (the send raises, as it does for a client
    that is gone). Falls back to ``WebSocket.send`` for any other websocket object.
    """
    send = getattr(websocket, "_send", None)  # where Starlette keeps the ASGI send
    return cast(AsgiSend, send if callable(send) else websocket.send)


def start_send(send: Coroutine[Any, Any, None]) -> SuspendedSend | None:
    """Run ``send`` until it first has to wait: None if it completed at once (a server's
    send normally does: the socket's buffer takes the frame, no task switch). Raises what
    ``send`` raises."""
    # Iterating the coroutine steps it as ``send(None)`` does, but a finished coroutine
    # ends the loop without raising StopIteration (saves about a third of this call).
    for waiting_on in send.__await__():
        return send, waiting_on
    return None


async def finish_send(suspended: SuspendedSend) -> None:
    """Drive a send that :func:`start_send` suspended to its end (closed if interrupted)."""
    send, waiting_on = suspended
    try:
        while True:
            if waiting_on is None:
                await asyncio.sleep(0)  # a bare yield: just let the loop run
            else:
                await asyncio.wait((waiting_on,))
            waiting_on = send.send(None)
    except StopIteration:
        pass
    except BaseException:
        send.close()
        raise


def task_started(task: asyncio.Task[None]) -> bool:
    """True once ``task``'s coroutine ran: a task cancelled before that never runs any of
    its body, not even its exception handlers."""
    coroutine = task.get_coro()
    assert inspect.iscoroutine(coroutine)
    return inspect.getcoroutinestate(coroutine) != inspect.CORO_CREATED


def warn_cannot_abort(connection_id: str, code: int) -> None:
    """Say once per process that a stuck client could not be cut off, and how to fix it."""
    global _ABORT_WARNED
    if not _ABORT_WARNED:
        _ABORT_WARNED = True
        logger.warning(
            "client %s did not take its close frame (%d) and this server offers no way to "
            "abort its connection; serve with "
            "--ws fastapi_pubsub_cluster.servers.uvicorn_ws:PubSubWebSocketProtocol "
            "(or the gunicorn worker class PubSubUvicornWorker) to cut such clients off",
            connection_id,
            code,
        )


async def send_unless_closed(
    websocket: WebSocket, message: str | bytes, connection_id: str, *, gone: bool = False
) -> None:
    """Send a text (str) or binary (bytes) frame straight to ``websocket``; nothing, with a
    debug line, if the socket is closed, closing or ``gone``, or its client disconnects
    meanwhile: a client that left is not an error. Other errors are raised."""
    if gone or websocket.application_state != WebSocketState.CONNECTED:
        logger.debug("nothing sent to %s: its socket is closed", connection_id)
        return
    try:
        if isinstance(message, bytes):
            await websocket.send_bytes(message)
        else:
            await websocket.send_text(message)
    except WebSocketDisconnect as exc:  # the client went away meanwhile
        logger.debug("nothing sent to %s: it disconnected (%r)", connection_id, exc)
