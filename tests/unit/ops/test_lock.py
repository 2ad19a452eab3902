"""The lock files are in step with pyproject.toml: `make lock` after changing a dependency."""

from __future__ import annotations

import re
import tomllib
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[3]
RELOCK = "pyproject.toml changed: run `make lock`"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


@cache
def pins(name: str) -> dict[str, str]:
    text = (ROOT / name).read_text()
    # Every pinned entry carries hashes (pip install --require-hashes refuses it otherwise).
    entries = re.split(r"\n(?=\S)", text)
    for entry in entries:
        if PIN.match(entry):
            assert "--hash=sha256:" in entry, f"{name}: {entry.splitlines()[0]} has no hash"
    return {canonicalize_name(m[1]): m[2] for m in PIN.finditer(text)}


def requirements(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = project["optional-dependencies"][extra] if extra else project["dependencies"]
    found = []
    for line in listed:
        requirement = Requirement(line)
        if canonicalize_name(requirement.name) == canonicalize_name(project["name"]):
            for own in sorted(requirement.extras):  # ers-worker[tracing]: that extra's
                found += requirements(own)
        else:
            found.append(requirement)
    return found


@pytest.mark.parametrize(
    ("lock", "extra"),
    [
        ("requirements.lock", None),
        ("requirements-dev.lock", None),
        ("requirements-dev.lock", "dev"),
    ],
)
def test_every_dependency_is_locked_at_a_version_pyproject_allows(
    lock: str, extra: str | None
) -> None:
    locked = pins(lock)
    for requirement in requirements(extra):
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement.name} is not in {lock}: {RELOCK}"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{lock} pins {name}=={locked[name]}, outside {requirement}: {RELOCK}"
        )


def test_the_tests_run_the_versions_the_image_ships() -> None:
    shipped, tested = pins("requirements.lock"), pins("requirements-dev.lock")
    differing = {n: (v, tested.get(n)) for n, v in shipped.items() if tested.get(n) != v}
    assert not differing, f"the two locks disagree on {differing}: run `make lock`"


def test_installs_use_the_locks_with_their_hashes() -> None:
    makefile = (ROOT / "Makefile").read_text()
    stamp = makefile.split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    assert "requirements-dev.lock" in stamp.splitlines()[0], "the stamp must follow the lock"
    assert "pip install --quiet --require-hashes -r requirements-dev.lock" in stamp
    assert "pip install --quiet --no-deps -e ." in stamp
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "pip install --require-hashes -r requirements.lock" in dockerfile
