"""Versions of everything measured, and the machine it ran on."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from typing import Any

import psutil

PACKAGES = (
    "fastapi-pubsub-cluster",
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "websockets",
    "redis",
    "hiredis",
    "msgpack",
    "python-socketio",
    "python-engineio",
    "broadcaster",
    "fastapi-websocket-pubsub",
    "fastapi-websocket-rpc",
    "permit-broadcaster",
    "psutil",
    "rich",
)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    if versions["fastapi-pubsub-cluster"] is None:  # run from a checkout, not installed
        import fastapi_pubsub_cluster

        versions["fastapi-pubsub-cluster"] = f"{fastapi_pubsub_cluster.__version__} (checkout)"
    return versions


def machine() -> dict[str, Any]:
    return {
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu": platform.processor() or platform.machine(),
        "memory_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }


def library_revision() -> str | None:
    """``BENCH_REVISION`` if set, else the checkout's git commit (``+dirty`` with local edits)."""
    given = os.environ.get("BENCH_REVISION")
    if given:
        return given
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "fastapi_pubsub_cluster"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit
