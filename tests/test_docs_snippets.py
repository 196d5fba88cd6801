"""Every Python snippet in README.md and docs/ is what runs: each one is executed (against
the test Redis where it names one) and, where it defines an app, started; a snippet marked
``<!-- fragment: name, ... -->`` on the line before its fence is a piece of a larger program:
it must compile, its imports must resolve, and it may use only the names the marker lists
besides its own (see docs/development.md)."""

from __future__ import annotations

import ast
import builtins
import importlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from starlette.applications import Starlette
from starlette.testclient import TestClient

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: The Redis the snippets name; the test runs them against the test Redis instead.
DOCS_REDIS_URL = "redis://localhost:6379/0"
_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```python[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.S | re.M
)
_FRAGMENT = re.compile(r"<!--\s*fragment(?::(?P<names>[^>]*))?\s*-->")


@dataclass(frozen=True)
class Snippet:
    path: Path
    line: int
    code: str
    #: None for a snippet that runs as it is; else the names a fragment takes from around it.
    context: frozenset[str] | None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def find_snippets() -> list[Snippet]:
    found = []
    for path in SOURCES:
        text = path.read_text()
        for match in _FENCE.finditer(text):
            body = match["body"]
            if body.lstrip().startswith("--8<--"):
                continue  # an included example file: those run in their own tests
            indent = len(match["indent"])
            code = "".join(line[indent:] for line in body.splitlines(keepends=True))
            before = text[: match.start()].rstrip().rsplit("\n", 1)[-1]
            marker = _FRAGMENT.fullmatch(before.strip())
            context = None
            if marker is not None:
                names = (marker["names"] or "").split(",")
                context = frozenset(name.strip() for name in names if name.strip())
            line = text.count("\n", 0, match.start()) + 1
            found.append(Snippet(path, line, code, context))
    return found


SNIPPETS = find_snippets()
PROGRAMS = {s.name: s for s in SNIPPETS if s.context is None}
FRAGMENTS = {s.name: s for s in SNIPPETS if s.context is not None}


def snippet(path: str, containing: str) -> Snippet:
    """The one runnable snippet of ``path`` whose code contains ``containing``."""
    matches = [s for s in PROGRAMS.values() if s.name.startswith(path + ":")]
    matches = [s for s in matches if containing in s.code]
    assert len(matches) == 1, f"{len(matches)} snippets of {path} contain {containing!r}"
    return matches[0]


@pytest.fixture
def clean_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str, key_prefix: str
) -> Iterator[str]:
    """No PUBSUB_* variable but the test's key prefix, no .env file, the library's logger
    as it was; the test's keys are removed afterwards. Yields the Redis URL to use."""
    for variable in [v for v in os.environ if v.startswith("PUBSUB_")]:
        monkeypatch.delenv(variable)
    monkeypatch.setenv("PUBSUB_KEY_PREFIX", key_prefix)
    monkeypatch.chdir(tmp_path)
    library_logger = logging.getLogger("fastapi_pubsub_cluster")
    handlers, level = list(library_logger.handlers), library_logger.level
    try:
        yield redis_url
    finally:
        library_logger.handlers[:] = handlers
        library_logger.setLevel(level)
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{key_prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def execute(snippet: Snippet, redis_url: str) -> dict[str, Any]:
    """Run ``snippet`` as a module of its own; returns its globals."""
    code = snippet.code.replace(DOCS_REDIS_URL, redis_url)
    namespace: dict[str, Any] = {"__name__": f"snippet_{snippet.line}"}
    exec(compile(code, snippet.name, "exec"), namespace)
    return namespace


def test_the_docs_have_snippets_and_fragments() -> None:
    assert len(PROGRAMS) >= 10 and FRAGMENTS


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_every_snippet_runs_and_its_app_starts(name: str, clean_environment: str) -> None:
    namespace = execute(PROGRAMS[name], clean_environment)
    app = namespace.get("app")
    if isinstance(app, Starlette):
        with TestClient(app):  # lifespan: the hub connects, then stops
            pass


@pytest.mark.parametrize("name", sorted(FRAGMENTS))
def test_every_fragment_compiles_and_uses_only_what_it_imports_or_declares(name: str) -> None:
    fragment = FRAGMENTS[name]
    assert fragment.context is not None
    tree = ast.parse(fragment.code, fragment.name)
    compile(fragment.code, fragment.name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    bound: set[str] = set()
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                bound.add((alias.asname or alias.name).split(".")[0])
                if isinstance(node, ast.ImportFrom):
                    module = importlib.import_module(node.module or "")
                    assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
                else:
                    importlib.import_module(alias.name)
        elif isinstance(node, ast.Name):
            (used if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    unknown = used - bound - set(dir(builtins)) - fragment.context
    assert not unknown, f"{name} uses {sorted(unknown)} without importing or declaring them"


def test_the_original_example_counts_its_client(clean_environment: str) -> None:
    namespace = execute(snippet("README.md", "SimplePubSubWebsocket"), clean_environment)
    with (
        TestClient(namespace["app"]) as client,
        client.websocket_connect("/ws/connected_clients") as socket,
    ):
        assert socket.receive_json() == {"num_connected_clients": 1}


def test_the_hub_example_refuses_an_invalid_room_with_422_not_500(clean_environment: str) -> None:
    namespace = execute(snippet("docs/hub.md", "class ChatSocket"), clean_environment)
    with TestClient(namespace["app"], raise_server_exceptions=False) as client:
        answer = client.post("/announce/not a room!", params={"text": "hi"})
        assert answer.status_code == 422, answer.text
        assert "channel id" in answer.json()["detail"]
        with client.websocket_connect("/ws/lobby?token=letmein") as socket:
            assert socket.receive_json() == {"online": 1}
            assert client.post("/announce/lobby", params={"text": "hi"}).status_code == 200
            assert socket.receive_json() == {"announcement": "hi"}


def test_the_exit_on_error_example_exits_3_on_a_bad_setting(
    clean_environment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PUBSUB_SLOW_CLIENT_POLICY", "drop")
    with pytest.raises(SystemExit) as exit_:
        execute(snippet("docs/deployment.md", "exit_on_configuration_error"), clean_environment)
    assert exit_.value.code == 3


def test_the_testing_page_tests_pass(clean_environment: str) -> None:
    namespace = execute(snippet("docs/testing.md", "test_counts_follow_joins"), clean_environment)
    namespace["test_counts_follow_joins_and_leaves"]()
    namespace["test_a_second_session_starts_afresh"]()


async def test_the_testing_page_live_server_test_passes(clean_environment: str) -> None:
    namespace = execute(snippet("docs/testing.md", "PubSubClient"), clean_environment)
    await namespace["test_a_publish_reaches_a_client_of_the_live_server"]()
