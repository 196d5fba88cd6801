"""Progress of a long run: a rich progress bar when rich is installed, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any


class ProgressDisplay:
    """``with ProgressDisplay(total) as progress: progress.start("..."); progress.done()``.

    A rich progress bar on a terminal; one plain line per step otherwise (CI logs).
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.completed = 0
        self.started = time.monotonic()
        self._rich: Any = None
        self._task: Any = None
        if not sys.stdout.isatty():
            return  # a log (CI): plain lines show progress as it happens
        try:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )
        except ImportError:
            return
        self._rich = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            transient=False,
        )

    def __enter__(self) -> ProgressDisplay:
        if self._rich is not None:
            self._rich.start()
            self._task = self._rich.add_task("starting", total=self.total)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._rich is not None:
            self._rich.stop()

    def start(self, description: str) -> None:
        if self._rich is not None:
            self._rich.update(self._task, description=description)
        else:
            elapsed = time.monotonic() - self.started
            print(f"[{self.completed + 1}/{self.total} {elapsed:5.0f}s] {description}", flush=True)

    def done(self, note: str | None = None) -> None:
        self.completed += 1
        if self._rich is not None:
            self._rich.advance(self._task)
            if note:
                self._rich.console.print(note)
        elif note:
            print(note, file=sys.stdout, flush=True)
