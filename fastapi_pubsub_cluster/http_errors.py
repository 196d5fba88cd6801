"""HTTP answers for the library's errors, for routes that publish: 4xx for bad input, 503
when Redis is unavailable, instead of a 500 and a traceback.

::

    app = FastAPI(lifespan=hub.lifespan)
    add_exception_handlers(app)
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .errors import InvalidChannelError, MalformedMessageError, MessageTooLargeError, PublishError
from .redaction import redact_text

logger = logging.getLogger("fastapi_pubsub_cluster")

#: Status code for each error a publishing route may meet.
STATUS_CODES: dict[type[Exception], int] = {
    InvalidChannelError: 422,
    MalformedMessageError: 422,
    MessageTooLargeError: 422,
    PublishError: 503,
}


def add_exception_handlers(app: Starlette) -> None:
    """Answer the library's errors raised in ``app``'s routes with their status code and
    ``{"detail": "<what went wrong>"}``."""
    for error in STATUS_CODES:
        app.add_exception_handler(error, _answer)


async def _answer(request: Request, exc: Exception) -> Response:
    status = next(code for error, code in STATUS_CODES.items() if isinstance(exc, error))
    detail = redact_text(str(exc))
    logger.info("%s %s answered %d: %s", request.method, request.url.path, status, detail)
    return JSONResponse({"detail": detail}, status_code=status)
