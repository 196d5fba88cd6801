"""benchmarks.installs finds files that two installed distributions own; this environment has
none. (A fresh venv with the [bench] extra takes half a minute of downloads, too slow here:
``benchmarks.peer_venvs`` runs the same check on every peer venv it builds.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.installs import shared_files, versions

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
