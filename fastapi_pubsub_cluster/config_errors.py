"""Configuration errors as one line a person can act on."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, get_args

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from .errors import ConfigurationError

#: The exit status of a process that could not start. uvicorn (``STARTUP_FAILURE``) and
#: gunicorn (``WORKER_BOOT_ERROR``) both use 3: a worker that exits with it makes
#: ``uvicorn --workers N`` and gunicorn's arbiter stop the whole server instead of
#: restarting that worker forever.
STARTUP_FAILURE = 3


def describe_errors(
    exc: ValidationError, fields: Mapping[str, FieldInfo], names: Mapping[str, str] | None = None
) -> str:
    """One line for every problem in ``exc`` (validating a model with ``fields``), naming
    the environment variable where a value came from the environment (``names`` maps field
    to variable), else the field."""
    names = names or {}
    problems: list[str] = []
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        name = names.get(field, field)
        if error["type"] == "extra_forbidden":
            problems.append(f"{name!r} is not a setting")
            continue
        problems.append(f"{name}={error['input']!r} is invalid: {_reason(fields, field, error)}")
    return "; ".join(problems)


def _reason(fields: Mapping[str, FieldInfo], field: str, error: Any) -> str:
    kind = error["type"]
    if kind == "literal_error":
        choices = get_args(fields[field].annotation)
        return "allowed values are " + ", ".join(repr(choice) for choice in choices)
    if kind in ("bool_parsing", "bool_type"):
        return "allowed values are true, false (or 1, 0, yes, no, on, off)"
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return "must be a whole number"
    if kind in ("float_parsing", "float_type"):
        return "must be a number"
    if kind == "value_error":
        return str(error["ctx"]["error"])
    return str(error["msg"]).splitlines()[0].lower()


@contextmanager
def exit_on_configuration_error() -> Iterator[None]:
    """Turn a :class:`ConfigurationError` into one line on stderr and exit status 3
    (:data:`STARTUP_FAILURE`).

    ::

        with exit_on_configuration_error():
            hub = PubSubHub()

    instead of a traceback through the server's import machinery.
    """
    try:
        yield
    except ConfigurationError as exc:
        print(f"fastapi-pubsub-cluster: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(STARTUP_FAILURE) from None
