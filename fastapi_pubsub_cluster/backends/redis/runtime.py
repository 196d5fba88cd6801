"""What exists while the Redis backend runs, shared by its transport and its stores."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...core.backend import FanOutSink
from .clients import CommandClient, RedisEndpoint
from .history import ResumePoints
from .links import Links
from .presence import Presence
from .publishing import PublishPath


@dataclass(frozen=True, slots=True)
class RedisRuntime:
    """The connections and workers of a started Redis backend."""

    endpoint: RedisEndpoint
    client: CommandClient
    presence: Presence
    publisher: PublishPath
    links: Links
    sink: FanOutSink
    resume_points: ResumePoints


#: The runtime of the started backend; raises HubClosedError when it is not started.
Running = Callable[[], RedisRuntime]
