"""Settings values from ``PUBSUB_*`` environment variables and a ``.env`` file, and the
variable names that errors in them are reported under."""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
from collections.abc import Collection, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from pydantic_settings import BaseSettings, DotEnvSettingsSource, EnvSettingsSource

from .errors import ConfigurationError

ENV_PREFIX = "PUBSUB_"
#: Variables under this prefix belong to the demo app, not to the library.
DEMO_ENV_PREFIX = ENV_PREFIX + "DEMO_"
#: The file :meth:`PubSubSettings.from_env` reads from the working directory, if present.
ENV_FILE = ".env"

logger = logging.getLogger("fastapi_pubsub_cluster")

# How alike an unknown PUBSUB_ name must be to a known one to count as its typo.
_TYPO_CUTOFF = 0.8
_warned_unknown: set[str] = set()
# Field -> environment variable, for the values from_env() is validating (error messages).
_environment_names: ContextVar[Mapping[str, str] | None] = ContextVar(
    "_environment_names", default=None
)


def read_environment(
    settings_cls: type[BaseSettings], environ: Mapping[str, str] | None, known: Collection[str]
) -> dict[str, Any]:
    """The values of ``settings_cls``'s fields that ``environ`` sets, by field name.

    With ``environ=None`` this reads ``os.environ`` and, under it, a ``.env`` file in the
    working directory. ``PUBSUB_DEMO_*`` variables are skipped. A ``PUBSUB_*`` variable
    that is not in ``known`` but looks like a typo of one raises
    :class:`ConfigurationError`; any other unknown one is logged once per process.
    """
    env = _MappingEnvSource(settings_cls, os.environ if environ is None else environ)
    layers: list[_MappingEnvSource | DotEnvSettingsSource] = [env]
    if environ is None and os.path.isfile(ENV_FILE):
        layers.insert(0, DotEnvSettingsSource(settings_cls, env_file=ENV_FILE))
    values: dict[str, Any] = {}
    names: set[str] = set()
    for layer in layers:  # later layers win: the process environment over .env
        try:
            found = layer()
        except ValueError as exc:  # a value the source could not even decode
            raise ConfigurationError(str(exc).splitlines()[0]) from None
        values.update((k, v) for k, v in found.items() if k in settings_cls.model_fields)
        names.update(name.upper() for name in layer.env_vars)
    _check_unknown_names(names, known)
    return values


@contextlib.contextmanager
def named_after_variables(names: Mapping[str, str]) -> Iterator[None]:
    """Within this block, errors in the fields of ``names`` (field -> variable) are
    reported under their environment variable."""
    token = _environment_names.set(names)
    try:
        yield
    finally:
        _environment_names.reset(token)


def variable_names() -> Mapping[str, str] | None:
    """Field -> environment variable, inside :func:`named_after_variables`; else None."""
    return _environment_names.get()


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): value for name, value in self._environ.items()}


def _check_unknown_names(names: set[str], known: Collection[str]) -> None:
    for name in sorted(names):
        if not name.startswith(ENV_PREFIX) or name in known or name.startswith(DEMO_ENV_PREFIX):
            continue
        suffixes = {variable[len(ENV_PREFIX) :]: variable for variable in known}
        close = difflib.get_close_matches(
            name[len(ENV_PREFIX) :], list(suffixes), n=1, cutoff=_TYPO_CUTOFF
        )
        if close:
            raise ConfigurationError(f"{name} is not a setting: did you mean {suffixes[close[0]]}?")
        if name not in _warned_unknown:
            _warned_unknown.add(name)
            logger.warning("ignoring %s: fastapi-pubsub-cluster has no such setting", name)
