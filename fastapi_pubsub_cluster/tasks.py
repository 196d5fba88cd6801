"""Ownership of background tasks: every task is tracked, logged if it fails, cancelled on close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from .errors import describe

logger = logging.getLogger("fastapi_pubsub_cluster")

T = TypeVar("T")
#: Seconds after which a task that has not ended since its cancellation is cancelled again.
RECANCEL_AFTER = 0.1


class TaskSupervisor:
    """Keeps a strong reference to each task it starts and cancels them all on :meth:`close`."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        """Start ``coro`` as a tracked task; an exception it ends with is logged, not lost."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "%s: background task %s failed",
                self._name,
                task.get_name(),
                exc_info=task.exception(),
            )

    async def close(self) -> None:
        """Cancel every tracked task and wait until all have finished.

        A task still running shortly after its cancellation is cancelled again: some
        library calls swallow a cancellation that meets a timeout of their own, and the
        task would otherwise run on (and this wait never end).
        """
        while self._tasks:
            pending = list(self._tasks)
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=RECANCEL_AFTER)


async def repeat_forever(
    work: Callable[[], Awaitable[None]],
    interval: float,
    name: str,
    restarted: Callable[[str], None],
    expected: tuple[type[BaseException], ...] = (),
) -> None:
    """Run ``work`` every ``interval`` seconds, for good: a failure of an ``expected`` kind
    (a backend that does not answer) is logged as a warning; any other is logged with its
    traceback and counted (``restarted(name)``); the loop goes on either way."""
    while True:
        await asyncio.sleep(interval)
        try:
            await work()
        except expected as exc:
            logger.warning("%s failed (%s); retrying in %.1fs", name, describe(exc), interval)
        except Exception:
            logger.exception("%s failed; going on", name)
            restarted(name)
