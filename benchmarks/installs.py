"""Files that more than one installed distribution owns (each one's ``RECORD``, read through
``importlib.metadata``).

Two distributions that own the same file overwrite each other: whichever installed last
decides what the other one imports (fastapi-websocket-pubsub's permit-broadcaster and
encode/broadcaster both install ``broadcaster/``). Standard library only, so that any
environment's python can run it as a script::

    python benchmarks/installs.py          # exit 1, listing them, if some file is shared
    python benchmarks/installs.py --json   # {"shared": {file: [owners]}, "versions": {...}}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from importlib import metadata


def _label(distribution: metadata.Distribution) -> str:
    return f"{distribution.metadata['Name']} {distribution.version}"


def shared_files(path: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Every file (absolute path) listed by the ``RECORD`` of two or more distributions
    found on ``path`` (default ``sys.path``), with those distributions ("name version")."""
    owners: dict[str, set[str]] = defaultdict(set)
    search = list(path) if path is not None else sys.path
    for distribution in metadata.distributions(path=search):
        label = _label(distribution)
        for file in distribution.files or ():
            owners[os.path.normpath(str(file.locate()))].add(label)
    return {file: sorted(names) for file, names in sorted(owners.items()) if len(names) > 1}


def versions(path: Sequence[str] | None = None) -> dict[str, str]:
    """Name -> version of every distribution found on ``path`` (default ``sys.path``)."""
    search = list(path) if path is not None else sys.path
    found: dict[str, str] = {}
    for distribution in metadata.distributions(path=search):
        found.setdefault(distribution.metadata["Name"], distribution.version)
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/installs.py", description=__doc__)
    parser.add_argument("--json", action="store_true", help="shared files and versions as JSON")
    arguments = parser.parse_args(argv)
    shared = shared_files()
    if arguments.json:
        print(json.dumps({"shared": shared, "versions": versions()}))
    elif shared:
        print(f"{len(shared)} files owned by more than one distribution ({sys.prefix}):")
        for file, names in shared.items():
            print(f"  {file}: {', '.join(names)}")
    else:
        print(f"no file is owned by two distributions ({sys.prefix})")
    return 1 if shared else 0


if __name__ == "__main__":
    sys.exit(main())
