"""Recent ids: a repeat of an id seen lately is recognised; the oldest are forgotten."""

from __future__ import annotations

from fastapi_pubsub_cluster.core.recent import RecentIds


def test_an_id_is_new_the_first_time_and_a_repeat_after() -> None:
    recent = RecentIds(4)
    assert recent.add("a") is True
    assert recent.add("a") is False


def test_beyond_its_capacity_the_oldest_id_is_forgotten() -> None:
    recent = RecentIds(2)
    for item in ("a", "b", "c"):
        recent.add(item)
    assert recent.add("b") is False
    assert recent.add("c") is False
    assert recent.add("a") is True  # forgotten: seen as new again


def test_a_repeat_does_not_refresh_an_ids_place() -> None:
    recent = RecentIds(2)
    recent.add("a")
    recent.add("b")
    recent.add("a")  # a repeat: "a" stays the oldest
    recent.add("c")
    assert recent.add("a") is True
