"""What the package index shows and installs: metadata, licence, links, version floors."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
REPOSITORY = "https://github.com/fastapi-pubsub-cluster/fastapi-pubsub-cluster"


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    loaded = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return dict(loaded["project"])


def test_readme_links_are_absolute_so_they_work_on_the_package_index() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)]+)\)", readme)
    assert targets
    for target in targets:
        assert target.startswith(("https://", "http://", "#")), target
        if target.startswith(f"{REPOSITORY}/blob/main/"):
            assert (ROOT / target.removeprefix(f"{REPOSITORY}/blob/main/")).exists(), target


def test_the_licence_is_mit_by_the_developers() -> None:
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License")
    assert "Copyright (c) 2026 fastapi-pubsub-cluster developers" in licence


def test_the_project_names_its_homepage_repository_and_issues(project: dict[str, Any]) -> None:
    assert project["urls"] == {
        "Homepage": REPOSITORY,
        "Repository": REPOSITORY,
        "Issues": f"{REPOSITORY}/issues",
    }


def test_settings_dependency_is_declared(project: dict[str, Any]) -> None:
    assert any(dep.startswith("pydantic-settings>=2") for dep in project["dependencies"])


def test_every_uvicorn_requirement_has_the_websockets_sansio_floor(
    project: dict[str, Any],
) -> None:
    # uvicorn 0.35 added websockets_sansio_impl, which uvicorn_ws.py subclasses.
    uvicorn = [
        dep
        for deps in project["optional-dependencies"].values()
        for dep in deps
        if re.match(r"uvicorn\b(?!-)", dep)
    ]
    assert uvicorn
    assert all(dep == "uvicorn[standard]>=0.35" for dep in uvicorn), uvicorn


def test_the_sdist_prunes_the_tests() -> None:
    manifest = (ROOT / "MANIFEST.in").read_text(encoding="utf-8").splitlines()
    assert "prune tests" in manifest


def test_the_wheel_and_the_sdist_ship_the_browser_client() -> None:
    # .ci/smoke_wheel.py reads it from the installed wheel; these are what put it there.
    assert (ROOT / "fastapi_pubsub_cluster" / "static" / "pubsub.js").is_file()
    loaded = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "static/*.js" in loaded["tool"]["setuptools"]["package-data"]["fastapi_pubsub_cluster"]
    manifest = (ROOT / "MANIFEST.in").read_text(encoding="utf-8").splitlines()
    includes = [line.split() for line in manifest if line.startswith("recursive-include")]
    assert any(words[1] == "fastapi_pubsub_cluster" and "*.js" in words for words in includes)
