"""Write .ci/constraints.txt: the exact versions, as installed here, of everything `mlplatform[test]` pulls in.

`.ci/run` installs through this file, so a new major of Dagster, MLflow or pandas on PyPI cannot change
what the tests run against unnoticed. To move to newer versions (README "Dependencies"):

    python3 -m venv /tmp/fresh && . /tmp/fresh/bin/activate
    python3 -m pip install -U -e ".[test]"     # the newest versions pyproject.toml's ranges allow
    python3 .ci/freeze_constraints.py          # rewrite the file from what was installed
    bash .ci/run                               # and prove them before committing the file
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

CONSTRAINTS = Path(__file__).with_name("constraints.txt")
ROOT = "mlplatform"
ROOT_EXTRAS = ("test",)


def _requirements(name: str, extras: tuple[str, ...]) -> list[Requirement]:
    """The requirements of installed `name` that apply here with `extras` (markers evaluated)."""
    found = []
    for text in distribution(name).requires or []:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": extra}) for extra in (*extras, "")):
            found.append(requirement)
    return found


def installed_closure() -> dict[str, str]:
    """Canonical name -> installed version of every distribution `mlplatform[test]` needs, mlplatform excluded."""
    pinned: dict[str, str] = {}
    seen: set[tuple[str, tuple[str, ...]]] = set()
    todo: list[tuple[str, tuple[str, ...]]] = [(ROOT, ROOT_EXTRAS)]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            version = distribution(name).version
        except PackageNotFoundError:
            sys.exit(f"{name} is required but not installed: install `.[test]` first")
        if canonicalize_name(name) != ROOT:
            pinned[canonicalize_name(name)] = version
        todo += [(r.name, tuple(sorted(r.extras))) for r in _requirements(name, extras)]
    return pinned


def main() -> None:
    pinned = installed_closure()
    header = [
        "# Exact versions the tests run against; `.ci/run` installs with `-c .ci/constraints.txt`.",
        "# Written by .ci/freeze_constraints.py (its docstring says how to refresh); do not edit by hand.",
        f"# Python {sys.version_info.major}.{sys.version_info.minor}.",
    ]
    lines = [f"{name}=={version}" for name, version in sorted(pinned.items())]
    CONSTRAINTS.write_text("\n".join(header + lines) + "\n")
    print(f"{CONSTRAINTS}: {len(lines)} pinned distributions")


if __name__ == "__main__":
    main()
