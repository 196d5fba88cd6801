"""A worker's hub makes Python's full garbage collections rarer (they walk every object, and
a worker holding thousands of connections pays for each), unless told not to."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from fastapi_pubsub_cluster import PubSubHub, PubSubSettings


@pytest.fixture
def python_defaults() -> Iterator[None]:
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        yield
    finally:
        gc.set_threshold(*saved)


async def test_a_started_hub_makes_full_collections_rarer(python_defaults: None) -> None:
    async with PubSubHub(settings=PubSubSettings()):
        assert gc.get_threshold() == (700, 10, 1000)


async def test_gc_tuning_off_leaves_the_collector_as_it_was(python_defaults: None) -> None:
    async with PubSubHub(settings=PubSubSettings(gc_tuning=False)):
        assert gc.get_threshold() == (700, 10, 10)


async def test_a_threshold_the_application_raised_is_never_lowered(python_defaults: None) -> None:
    gc.set_threshold(5000, 20, 5000)
    async with PubSubHub(settings=PubSubSettings()):
        assert gc.get_threshold() == (5000, 20, 5000)
