"""``pubsub.d.ts`` describes ``pubsub.js``: a usage example type-checks under
``tsc --noEmit --strict`` (``typescript`` from ``tests/node``'s lock file), misuse does not,
and the declarations name exactly what the module exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).parent / "node"
TSC = NODE_DIR / "node_modules" / ".bin" / "tsc"
STATIC = Path(__file__).parent.parent / "fastapi_pubsub_cluster" / "static"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node and npm are missing (CI installs them)",
)


@pytest.fixture(scope="module")
def tsc() -> Path:
    """The lock file's ``tsc``; ``npm ci`` installs it when ``node_modules`` is missing."""
    if not TSC.exists():
        subprocess.run(
            ["npm", "ci", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund"],
            check=True,
            timeout=300,
        )
    return TSC


def type_check(tsc: Path, project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tsc), "--noEmit", "--strict", "-p", str(project)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_usage_example_type_checks_strictly(tsc: Path) -> None:
    result = type_check(tsc, NODE_DIR / "tsconfig.json")
    assert result.returncode == 0, result.stdout + result.stderr


def test_misuse_is_a_type_error(tsc: Path, tmp_path: Path) -> None:
    """The declarations are not ``any``: wrong arguments and payloads fail the check."""
    (tmp_path / "misuse.ts").write_text(
        f'import {{ PubSubClient }} from "{STATIC / "pubsub.js"}";\n'
        'const client = new PubSubClient("/ws/news", { format: "xml" });\n'
        "client.join(42);\n"
        'client.on("presence", (p) => p.count.toUpperCase());\n'
        "const id: number = client.lastId('news');\n"
    )
    config = json.loads((NODE_DIR / "tsconfig.json").read_text())
    config["files"] = ["misuse.ts"]
    (tmp_path / "tsconfig.json").write_text(json.dumps(config))
    result = type_check(tsc, tmp_path / "tsconfig.json")
    assert result.returncode != 0
    errors = re.findall(r"misuse\.ts\((\d+),\d+\): error", result.stdout)
    assert sorted(set(errors)) == ["2", "3", "4", "5"], result.stdout


def test_the_declarations_name_what_the_module_exports() -> None:
    exported = re.compile(r"^export (?:async )?(?:class|function) (\w+)", re.MULTILINE)
    script = set(exported.findall((STATIC / "pubsub.js").read_text()))
    declared = set(exported.findall((STATIC / "pubsub.d.ts").read_text()))
    assert script == declared == {"PubSubClient", "compareStreamIds", "decode", "encode"}
