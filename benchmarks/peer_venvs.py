"""One virtualenv per peer whose install would clash with another's.

fastapi-websocket-pubsub depends on permit-broadcaster, a fork of encode/broadcaster that
installs the same ``broadcaster/`` files: in one environment the one installed last owns
them and the other peer runs on its code (``benchmarks/installs.py`` lists such files). So
each of these peers is installed alone in ``.bench-venvs/<name>`` (``BENCH_VENV_DIR``
elsewhere): ``python -m venv``, then ``pip install -r benchmarks/requirements/<name>.txt``
with the server stack (uvicorn, FastAPI, websockets, redis-py...) pinned to the versions of
the driver's environment, so that the peer is the only difference between systems. Its
servers run on that venv's python, from the checkout (``benchmarks.apps`` needs only the
standard library besides the peer). A venv is built on first use and rebuilt when its
requirements, the pins or the base python change; it is refused if any file in it is owned
by two distributions.

``python -m benchmarks.peer_venvs [NAME ...]`` builds them ahead (all by default) and prints
what each holds.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "benchmarks" / "requirements"
INSTALLS_SCRIPT = ROOT / "benchmarks" / "installs.py"
#: The peer venvs, each ``REQUIREMENTS/<name>.txt``.
PEER_VENVS = ("broadcaster", "permit")
#: Pinned in every peer venv to this environment's versions (where installed here).
SHARED_STACK = (
    "fastapi",
    "starlette",
    "pydantic",
    "pydantic-core",
    "anyio",
    "uvicorn",
    "uvloop",
    "httptools",
    "websockets",
    "redis",
    "hiredis",
)
STAMP = "bench-venv.json"
PIP_TIMEOUT = 900.0


def venv_root() -> Path:
    return Path(os.environ.get("BENCH_VENV_DIR") or ROOT / ".bench-venvs")


def requirements_file(name: str) -> Path:
    if name not in PEER_VENVS:
        raise KeyError(f"no peer venv {name!r} (known: {', '.join(PEER_VENVS)})")
    return REQUIREMENTS / f"{name}.txt"


def constraints() -> list[str]:
    """``name==version`` of each :data:`SHARED_STACK` package installed in this environment."""
    pins: list[str] = []
    for package in SHARED_STACK:
        try:
            pins.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def _stamp(name: str) -> dict[str, Any]:
    """What the venv was built from: it is rebuilt when any of this changes."""
    return {
        "requirements": requirements_file(name).read_text(encoding="utf-8"),
        "constraints": constraints(),
        "base_prefix": sys.base_prefix,
        "python_version": sys.version,
    }


def _python(path: Path) -> Path:
    return path / "bin" / "python"


@contextmanager
def _locked(root: Path, name: str) -> Iterator[None]:
    """One builder of a venv at a time (another suite or test may be building it)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def inspect(python: Path) -> dict[str, Any]:
    """``{"shared": {file: [owners]}, "versions": {name: version}}`` of the environment of
    ``python`` (``benchmarks/installs.py`` run isolated by that python)."""
    done = subprocess.run(
        [str(python), "-I", str(INSTALLS_SCRIPT), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if not done.stdout.strip():
        raise RuntimeError(f"{python} {INSTALLS_SCRIPT.name} failed: {done.stderr[-400:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _run(command: Sequence[str], what: str) -> None:
    done = subprocess.run(
        list(command), capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr.strip()[-1500:]}")


def _build(name: str, path: Path, stamp: dict[str, Any], log: Callable[[str], None]) -> None:
    log(f"peer venv {name}: building {path} (pip install -r {requirements_file(name)})")
    shutil.rmtree(path, ignore_errors=True)
    _run([sys.executable, "-m", "venv", str(path)], f"python -m venv {path}")
    pins = path / "bench-constraints.txt"
    pins.write_text("".join(f"{pin}\n" for pin in stamp["constraints"]), encoding="utf-8")
    _run(
        [
            str(_python(path)),
            *("-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
            *("-r", str(requirements_file(name)), "-c", str(pins)),
        ],
        f"pip install into the {name} peer venv",
    )
    shared = inspect(_python(path))["shared"]
    if shared:
        listed = "; ".join(f"{file}: {', '.join(owners)}" for file, owners in shared.items())
        raise RuntimeError(f"peer venv {name}: files owned by two distributions: {listed}")
    (path / STAMP).write_text(json.dumps(stamp, indent=1), encoding="utf-8")


def ensure_venv(name: str, log: Callable[[str], None] | None = None) -> Path:
    """The python of peer venv ``name``, built first if missing or out of date."""
    path = venv_root() / name
    stamp = _stamp(name)
    with _locked(venv_root(), name):
        try:
            current = json.loads((path / STAMP).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            current = None
        if current != stamp or not _python(path).exists():
            _build(name, path, stamp, log or (lambda line: print(line, file=sys.stderr)))
    return _python(path)


def describe(name: str) -> dict[str, Any]:
    """A built venv for the results: its python, what it was built from, what it holds."""
    python = ensure_venv(name)
    found = inspect(python)
    return {
        "python": str(python),
        "requirements": str(requirements_file(name).relative_to(ROOT)),
        "requirements_sha256": hashlib.sha256(requirements_file(name).read_bytes()).hexdigest(),
        "constraints": constraints(),
        "packages": found["versions"],
        "shared_files": found["shared"],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peer_venvs", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(PEER_VENVS))
    arguments = parser.parse_args(argv)
    unknown = set(arguments.names) - set(PEER_VENVS)
    if unknown:
        parser.error(f"no peer venv {', '.join(sorted(unknown))} (known: {', '.join(PEER_VENVS)})")
    for name in arguments.names or PEER_VENVS:
        described = describe(name)
        packages = ", ".join(f"{k} {v}" for k, v in described["packages"].items())
        shared = len(described["shared_files"])
        print(f"{name}: {described['python']}\n  {packages}\n  files owned twice: {shared}")


if __name__ == "__main__":
    main()
