"""Log lines of the library with a time and a level, once, under any server.

The library logs to the ``fastapi_pubsub_cluster`` logger and configures nothing by itself.
Under uvicorn that logger has no handler (uvicorn configures only its own loggers), so
Python prints warnings bare, without time or level, and drops info lines. Call
:func:`configure_logging` where the app is built::

    from fastapi_pubsub_cluster.logs import configure_logging
    configure_logging()

Under gunicorn,
:class:`~fastapi_pubsub_cluster.servers.gunicorn_worker.PubSubUvicornWorker` hands the
library's logger to gunicorn's error log instead, as uvicorn's worker does for uvicorn's own
loggers; :func:`configure_logging` then leaves it alone.
"""

from __future__ import annotations

import logging
import sys

LOGGER_NAME = "fastapi_pubsub_cluster"
#: Time, level and process id: several workers write to one stream.
LOG_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(name)s: %(message)s"


def configure_logging(level: int | str = logging.INFO) -> logging.Logger:
    """Give the library's logger one handler to stderr, unless logging is already set up.

    Idempotent: a second call (each worker importing the app, a reload) adds nothing. If the
    library's logger already has handlers, or the root logger has (the application configured
    logging), the lines already go somewhere once and nothing changes, so none is printed
    twice.
    """
    logger = logging.getLogger(LOGGER_NAME)
    if logger.handlers or logging.getLogger().handlers:
        return logger
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # one line, even if the root logger gets a handler later
    return logger


def attach_to(target: logging.Logger) -> None:
    """Send the library's lines through ``target``'s handlers only (gunicorn's error log)."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers = list(target.handlers)
    logger.setLevel(target.level)
    logger.propagate = False


class _TracebackToDebug(logging.Filter):
    """Turns a server's log of a traceback ending in ``error_name`` into a debug line."""

    def __init__(self, error_name: str) -> None:
        super().__init__()
        self.error_name = error_name

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if (
            record.levelno > logging.DEBUG
            and message.startswith("Traceback")
            and (self.error_name in message)
        ):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def traceback_at_debug(error: type[BaseException], server_logger: str = "uvicorn.error") -> None:
    """Log the tracebacks of ``error`` that ``server_logger`` prints at debug level only.

    Starlette hands a failed lifespan's traceback to the server, which logs it as an
    error; where the library has logged one line that says what to fix, that traceback is
    only noise, once per worker."""
    logger = logging.getLogger(server_logger)
    if not any(isinstance(f, _TracebackToDebug) for f in logger.filters):
        logger.addFilter(_TracebackToDebug(error.__name__))
