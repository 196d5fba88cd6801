"""What the package index shows and installs: metadata, licence, links, version floors."""

from __future__ import annotations

import re
import tomllib
import unicodedata
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MARKDOWN = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
# The project has no public address: an address under this one was invented.
INVENTED = "github.com/" + "fastapi-pubsub-cluster"


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    loaded = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return dict(loaded["project"])


def _prose(text: str) -> str:
    """Markdown without its fenced code blocks and code spans (their brackets are code)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", text)


def _links(path: Path) -> list[str]:
    prose = _prose(path.read_text(encoding="utf-8"))
    inline = re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", prose)
    automatic = re.findall(r"<([a-z][a-z0-9+.-]*:[^>\s]+)>", prose)
    return inline + automatic


def _anchors(path: Path) -> set[str]:
    """The ids Python-Markdown's toc (what mkdocs uses) gives the headings of ``path``."""
    ids = set()
    for line in _prose(path.read_text(encoding="utf-8")).splitlines():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            text = unicodedata.normalize("NFKD", heading.group(1))
            text = re.sub(r"[^\w\s-]", "", text.encode("ascii", "ignore").decode()).strip()
            ids.add(re.sub(r"[-\s]+", "-", text.lower()))
    return ids


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda page: str(page.relative_to(ROOT)))
def test_markdown_links_are_relative_and_resolve_inside_the_repository(page: Path) -> None:
    links = _links(page)
    assert links or page.parent == DOCS, page
    for link in links:
        if re.match(r"https?://(localhost|127\.0\.0\.1)(:\d+)?(/|$)", link):
            continue  # an address to open on one's own machine (the demo's)
        assert not re.match(r"[a-z][a-z0-9+.-]*:", link), f"{page.name}: {link} is not relative"
        target, _, anchor = link.partition("#")
        resolved = (page.parent / target).resolve() if target else page
        assert resolved.is_relative_to(ROOT), f"{page.name}: {link} leaves the repository"
        assert resolved.exists(), f"{page.name}: {link} names no file"
        if page.parent == DOCS:
            # mkdocs builds docs/ alone: a link out of it would be broken on the site.
            assert resolved.is_relative_to(DOCS), f"{page.name}: {link} leaves docs/"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{page.name}: {link} names no heading"


def test_no_file_names_an_invented_address() -> None:
    named = [
        path
        for pattern in ("*.md", "*.py", "*.toml", "*.yml", "*.yaml", "*.conf", "*.js", "*.html")
        for path in ROOT.rglob(pattern)
        if not any(
            part in {".git", "node_modules", "site", "build", "dist", ".venv"}
            or part.endswith(".egg-info")
            for part in path.relative_to(ROOT).parts
        )
        and INVENTED in path.read_text(encoding="utf-8", errors="replace")
    ]
    named += [
        ROOT / name
        for name in ("Dockerfile", "compose.yaml", "MANIFEST.in")
        if (ROOT / name).exists() and INVENTED in (ROOT / name).read_text(encoding="utf-8")
    ]
    assert not named


def test_the_licence_is_mit_by_the_developers() -> None:
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License")
    assert "Copyright (c) 2026 fastapi-pubsub-cluster developers" in licence


def test_the_project_names_no_address(project: dict[str, Any]) -> None:
    # No public homepage, repository or tracker exists: the index page shows none.
    assert "urls" not in project
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert not re.search(r"https?://", text)


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


def test_the_wheel_and_the_sdist_ship_the_typescript_declarations() -> None:
    assert (ROOT / "fastapi_pubsub_cluster" / "static" / "pubsub.d.ts").is_file()
    loaded = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    data = loaded["tool"]["setuptools"]["package-data"]["fastapi_pubsub_cluster"]
    assert "static/*.d.ts" in data
    manifest = (ROOT / "MANIFEST.in").read_text(encoding="utf-8").splitlines()
    includes = [line.split() for line in manifest if line.startswith("recursive-include")]
    assert any(words[1] == "fastapi_pubsub_cluster" and "*.d.ts" in words for words in includes)


def test_the_python_client_has_an_extra(project: dict[str, Any]) -> None:
    assert any(dep.startswith("websockets>=") for dep in project["optional-dependencies"]["client"])
