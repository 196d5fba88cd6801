"""benchmarks.installs finds files that two installed distributions own, and this environment
has none; the peers whose installs clash (broadcaster, fastapi-websocket-pubsub) are each alone
in a venv of their own, not in the [bench] extra, and their servers run on its python. (A
fresh venv with the [bench] extra takes half a minute of downloads, too slow here:
``benchmarks.peer_venvs`` runs the same check on every peer venv it builds.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from benchmarks import peer_venvs, servers
from benchmarks.installs import shared_files, versions
from benchmarks.peer_venvs import PEER_VENVS, requirements_file
from benchmarks.targets import BROADCASTER, KNOWN_TARGETS, PERMIT, by_name

ROOT = Path(__file__).resolve().parent.parent


def fake_distribution(site: Path, name: str, version: str, files: list[str]) -> None:
    """A ``<name>-<version>.dist-info`` in ``site`` whose RECORD lists ``files``."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    record = [*files, f"{info.name}/METADATA", f"{info.name}/RECORD"]
    (info / "RECORD").write_text("".join(f"{file},,\n" for file in record))
    for file in files:
        (site / file).parent.mkdir(parents=True, exist_ok=True)
        (site / file).write_text("")


def test_a_file_two_distributions_install_is_reported_with_both(tmp_path: Path) -> None:
    # As broadcaster and permit-broadcaster: the same package directory, one file each alone.
    fake_distribution(tmp_path, "broadcaster", "0.3.1", ["pkg/__init__.py", "pkg/a.py"])
    fake_distribution(tmp_path, "permit-broadcaster", "0.2.7", ["pkg/__init__.py", "pkg/b.py"])
    fake_distribution(tmp_path, "other", "1.0", ["other/__init__.py"])
    assert shared_files([str(tmp_path)]) == {
        str(tmp_path / "pkg" / "__init__.py"): ["broadcaster 0.3.1", "permit-broadcaster 0.2.7"]
    }
    assert versions([str(tmp_path)]) == {
        "broadcaster": "0.3.1",
        "other": "1.0",
        "permit-broadcaster": "0.2.7",
    }


def test_distributions_of_their_own_files_share_nothing(tmp_path: Path) -> None:
    fake_distribution(tmp_path, "one", "1.0", ["one/__init__.py"])
    fake_distribution(tmp_path, "two", "2.0", ["two/__init__.py"])
    assert shared_files([str(tmp_path)]) == {}


def test_no_file_of_this_environment_is_owned_by_two_distributions() -> None:
    # As a script (any environment's python runs it, isolated from this checkout).
    done = subprocess.run(
        [sys.executable, "-I", str(ROOT / "benchmarks" / "installs.py"), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = json.loads(done.stdout)
    assert report["shared"] == {}, report["shared"]
    assert done.returncode == 0
    assert "pytest" in report["versions"]


def requirement_names(requirements: list[str]) -> set[str]:
    """The distribution names of requirement lines (comments and blanks skipped)."""
    names: set[str] = set()
    for line in requirements:
        match = re.match(r"\s*([A-Za-z0-9._-]+)", line.partition("#")[0])
        if match:
            names.add(match.group(1).lower().replace("_", "-"))
    return names


def test_the_peers_that_clash_are_each_alone_in_a_venv_and_not_in_the_bench_extra() -> None:
    with open(ROOT / "pyproject.toml", "rb") as handle:
        bench = tomllib.load(handle)["project"]["optional-dependencies"]["bench"]
    peers = {
        name: requirement_names(requirements_file(name).read_text().splitlines())
        for name in PEER_VENVS
    }
    clashing = {"broadcaster", "fastapi-websocket-pubsub", "permit-broadcaster"}
    assert not clashing & requirement_names(bench)
    assert clashing & peers["broadcaster"] == {"broadcaster"}
    assert clashing & peers["permit"] == {"fastapi-websocket-pubsub"}
    assert {BROADCASTER.venv, PERMIT.venv} == set(PEER_VENVS)
    assert all(target.venv in (None, *PEER_VENVS) for target in KNOWN_TARGETS)


def test_a_peer_server_runs_on_its_venvs_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(servers, "ensure_venv", lambda name: Path(f"/venvs/{name}/bin/python"))
    assert servers.server_command(BROADCASTER, 8000)[:3] == [
        "/venvs/broadcaster/bin/python",
        "-m",
        "uvicorn",
    ]
    assert servers.server_command(PERMIT, 8000)[0] == "/venvs/permit/bin/python"
    assert servers.server_command(by_name("ours-redis-1w"), 8000)[0] == sys.executable


def test_a_peer_venv_is_rebuilt_only_when_what_it_was_built_from_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds: list[str] = []

    def build(name: str, path: Path, stamp: dict[str, Any], log: object) -> None:
        builds.append(name)
        (path / "bin").mkdir(parents=True, exist_ok=True)
        (path / "bin" / "python").touch()
        (path / peer_venvs.STAMP).write_text(json.dumps(stamp))

    monkeypatch.setenv("BENCH_VENV_DIR", str(tmp_path))
    monkeypatch.setattr(peer_venvs, "_build", build)
    python = peer_venvs.ensure_venv("permit")
    assert python == tmp_path / "permit" / "bin" / "python"
    assert peer_venvs.ensure_venv("permit") == python
    assert builds == ["permit"]
    stamp = json.loads((tmp_path / "permit" / peer_venvs.STAMP).read_text())
    assert "fastapi-websocket-pubsub" in stamp["requirements"]
    (tmp_path / "permit" / peer_venvs.STAMP).write_text(json.dumps({**stamp, "constraints": []}))
    assert peer_venvs.ensure_venv("permit") == python  # other pins: rebuilt
    assert builds == ["permit", "permit"]
