"""Settings read from the environment, loudly when an app module is being imported."""

from __future__ import annotations

import sys
from types import FrameType

from .config_errors import exit_on_configuration_error
from .settings import PubSubSettings


def settings_from_environment() -> PubSubSettings:
    """``PubSubSettings.from_env()``; while an app module is being imported (startup), a
    configuration error stops the process with one line naming the variable and the allowed
    values, instead of a traceback through the server's import machinery."""
    if not _importing():
        return PubSubSettings.from_env()
    with exit_on_configuration_error():
        return PubSubSettings.from_env()


def _importing() -> bool:
    """True when called, at any depth, from a module's top level during its import."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False
