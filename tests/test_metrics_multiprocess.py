"""Prometheus multiprocess mode: every worker's figures, served from any worker."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

WORKER = textwrap.dedent(
    """
    import os, sys
    from prometheus_client import CollectorRegistry
    from fastapi_pubsub_cluster.metrics import PrometheusMetrics

    metrics = PrometheusMetrics(registry=CollectorRegistry())
    connections = int(sys.argv[1])
    metrics.bind(lambda: connections, lambda: 1)
    metrics.published()
    print(os.getpid())
    """
)

SCRAPE = textwrap.dedent(
    """
    import asyncio, sys
    import httpx
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import mark_process_dead
    from fastapi_pubsub_cluster.metrics import PrometheusMetrics

    for pid in sys.argv[1:]:
        mark_process_dead(int(pid))  # what gunicorn's child_exit hook does
    app = PrometheusMetrics(registry=CollectorRegistry()).asgi_app()

    async def scrape() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
            print((await client.get("/")).text)

    asyncio.run(scrape())
    """
)


def run(script: str, *args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the scrape:\n{text}")


@pytest.fixture
def multiproc_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}


def test_any_worker_serves_the_connections_of_every_worker(
    multiproc_env: dict[str, str],
) -> None:
    run(WORKER, "3", env=multiproc_env)
    run(WORKER, "4", env=multiproc_env)
    scraped = run(SCRAPE, env=multiproc_env)
    assert sample(scraped, "pubsub_connections") == 7
    assert sample(scraped, "pubsub_channels") == 2
    assert sample(scraped, "pubsub_messages_published_total") == 2


def test_a_dead_worker_leaves_the_connection_count(multiproc_env: dict[str, str]) -> None:
    dead = run(WORKER, "3", env=multiproc_env).strip()
    run(WORKER, "4", env=multiproc_env)
    scraped = run(SCRAPE, dead, env=multiproc_env)
    assert sample(scraped, "pubsub_connections") == 4
