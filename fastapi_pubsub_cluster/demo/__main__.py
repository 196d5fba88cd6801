"""``python -m fastapi_pubsub_cluster.demo``: serve the demo page with uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

from ..errors import PubSubError
from ..settings import PubSubSettings
from .app import DEFAULT_CHANNEL, DEMO_CHANNEL_ENV

APP_IMPORT_STRING = "fastapi_pubsub_cluster.demo.asgi:app"


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with defaults taken from the environment where it has them."""
    parser = argparse.ArgumentParser(
        prog="python -m fastapi_pubsub_cluster.demo",
        description="Serve a live page: clients per channel, a chat, and the worker behind each.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=8000, help="port to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--channel",
        default=os.environ.get(DEMO_CHANNEL_ENV, DEFAULT_CHANNEL),
        help="channel the page joins first (default: %(default)s)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("PUBSUB_REDIS_URL") or None,
        help="Redis URL for a cluster (default: $PUBSUB_REDIS_URL, else in memory)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn worker processes; more than one needs --redis-url (default: 1)",
    )
    parser.add_argument("--log-level", default="info", help="uvicorn log level")
    return parser.parse_args(argv)


def without_password(url: str) -> str:
    """``url`` with its password masked, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def main(argv: Sequence[str] | None = None) -> int:
    """Check the options, hand them to the workers through the environment, run uvicorn."""
    import uvicorn

    arguments = parse_arguments(argv)
    if arguments.workers < 1:
        print("--workers must be at least 1", file=sys.stderr)
        return 2
    if arguments.workers > 1 and not arguments.redis_url:
        print(
            "--workers > 1 needs --redis-url (or PUBSUB_REDIS_URL): in-memory workers "
            "do not see each other's clients",
            file=sys.stderr,
        )
        return 2
    # Workers are separate processes that import the app by name: the environment is
    # the one way to hand them the options.
    os.environ[DEMO_CHANNEL_ENV] = arguments.channel
    if arguments.redis_url:
        os.environ["PUBSUB_REDIS_URL"] = arguments.redis_url
    try:
        PubSubSettings.from_env().validate_channel_id(arguments.channel)
    except PubSubError as exc:
        print(f"invalid settings: {exc}", file=sys.stderr)
        return 2
    backend = (
        f"Redis at {without_password(arguments.redis_url)}" if arguments.redis_url else "in memory"
    )
    print(
        f"demo on http://{arguments.host}:{arguments.port}/ "
        f"({arguments.workers} worker(s), {backend})",
        flush=True,
    )
    uvicorn.run(
        APP_IMPORT_STRING,
        host=arguments.host,
        port=arguments.port,
        workers=arguments.workers,
        log_level=arguments.log_level,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
