"""The lock: every dependency pinned with hashes, one set of pins for make and the image alike.

``requirements/lock.txt`` (everything, dev tools included) is what ``make`` installs;
``requirements/runtime.txt`` (the runtime half) is what the Dockerfile installs; both come from
``make lock``. They hold no addresses, only names, versions and hashes.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements"
LOCK = REQUIREMENTS / "lock.txt"
RUNTIME = REQUIREMENTS / "runtime.txt"
BOOTSTRAP = REQUIREMENTS / "bootstrap.txt"
LOCK_FILES = (LOCK, RUNTIME, BOOTSTRAP)

_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)(?: ;.*)?$")


def pins(path: Path) -> dict[str, tuple[str, int]]:
    """Each requirement of a hash-pinned file: canonical name → (version, number of hashes).

    Fails on any line that is not ``name==version [; marker] \\`` followed by its hashes.
    """
    found: dict[str, tuple[str, int]] = {}
    entries = re.split(r"\n(?=\S)", path.read_text(encoding="utf-8"))
    for entry in entries:
        lines = [line.strip() for line in entry.splitlines()]
        lines = [line for line in lines if line and not line.startswith("#")]
        if not lines:
            continue
        head = lines[0].removesuffix("\\").strip()
        match = _PIN.match(head)
        assert match, f"{path.name}: {head!r} is not pinned with =="
        hashes = [line for line in lines[1:] if line.startswith("--hash=sha256:")]
        found[canonicalize_name(match["name"])] = (match["version"], len(hashes))
    return found


@pytest.mark.parametrize("path", LOCK_FILES, ids=lambda path: path.name)
def test_every_requirement_is_pinned_with_a_hash(path: Path) -> None:
    locked = pins(path)
    assert locked, f"{path.name} pins nothing"
    unhashed = sorted(name for name, (_, hashes) in locked.items() if not hashes)
    assert not unhashed, f"{path.name}: no hash for {unhashed}"


@pytest.mark.parametrize("path", LOCK_FILES, ids=lambda path: path.name)
def test_lock_files_hold_no_addresses(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "://" not in text
    assert "--index-url" not in text
    assert "--extra-index-url" not in text
    assert "--find-links" not in text


def _declared() -> tuple[list[Requirement], dict[str, list[Requirement]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    groups = {
        name: [Requirement(text) for text in entries]
        for name, entries in project["dependency-groups"].items()
    }
    return [Requirement(text) for text in project["project"]["dependencies"]], groups


def test_the_lock_holds_every_declared_dependency_at_an_allowed_version() -> None:
    runtime, groups = _declared()
    locked = pins(LOCK)
    for requirement in [*runtime, *groups["dev"], *groups["build"]]:
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} is not in the lock: run `make lock`"
        version, _ = locked[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"the lock pins {name}=={version}, which {requirement} does not allow: `make lock`"
        )


def test_the_image_gets_the_same_pins_as_make() -> None:
    runtime, groups = _declared()
    locked = pins(LOCK)
    image = pins(RUNTIME)
    for name, (version, _) in image.items():
        assert name in locked, f"runtime.txt has {name}, lock.txt does not: `make lock`"
        assert locked[name][0] == version, f"{name}: {version} in runtime.txt, not {locked[name]}"
    for requirement in [*runtime, *groups["build"]]:
        assert canonicalize_name(requirement.name) in image, f"the image lacks {requirement}"
    dev_only = {canonicalize_name(r.name) for r in groups["dev"]} - set(image)
    assert {"pytest", "mypy", "ruff"} <= dev_only, "dev tools belong to lock.txt only"


def test_the_dockerfile_and_make_install_from_the_lock() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "pip install --require-hashes --no-deps -r requirements/runtime.txt" in dockerfile
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "pip sync --quiet --python $(BIN)/python --require-hashes" in makefile
    assert "--require-hashes -r requirements/bootstrap.txt" in makefile
