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
