"""The local release registry: a git repository with one commit and one tag ``vX.Y.Z`` per version.

The working tree of the registry always holds the latest published release; every older
version stays reachable through its tag. Versions are immutable: publishing a tag that exists
is refused. The git command line does the work (``git`` must be on PATH).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from core.stage import exclusive_lock
from release.checksums import MANIFEST_NAME
from release.layout import ReleaseError

log = logging.getLogger(__name__)

_MARKER = "rrec-registry"
_SEMVER = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)$")
# Releases are made by a tool, not a person: a fixed identity unless the user configured one.
_IDENTITY = {
    "GIT_AUTHOR_NAME": "rrec release",
    "GIT_AUTHOR_EMAIL": "rrec-release@localhost",
    "GIT_COMMITTER_NAME": "rrec release",
    "GIT_COMMITTER_EMAIL": "rrec-release@localhost",
}


def parse_version(version: str) -> tuple[int, int, int]:
    """``"1.2.3"`` or ``"v1.2.3"`` as a tuple; anything else is a :class:`ReleaseError`."""
    match = _SEMVER.match(version.strip())
    if not match:
        raise ReleaseError(f"version {version!r} is not semantic (X.Y.Z, e.g. 1.0.0)")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def version_tag(version: str) -> str:
    """The tag of a version: ``1.0.0`` and ``v1.0.0`` both give ``v1.0.0``."""
    major, minor, patch = parse_version(version)
    return f"v{major}.{minor}.{patch}"


class Registry:
    """A git repository of releases at ``path``."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    @property
    def exists(self) -> bool:
        """Whether ``path`` is a registry (a folder with its own ``.git``)."""
        return (self.path / ".git").is_dir()

    def _git(self, *args: str, binary: bool = False) -> Any:
        env = {**os.environ}
        for key, value in _IDENTITY.items():
            env.setdefault(key, value)
        try:
            result = subprocess.run(
                ["git", "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false", *args],
                cwd=self.path,
                env=env,
                capture_output=True,
                text=not binary,
                check=False,
            )
        except FileNotFoundError:
            raise ReleaseError("the `git` command is not installed; install git to use a local registry") from None
        if result.returncode != 0:
            stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode(errors="replace")
            raise ReleaseError(f"git {' '.join(args)} failed in registry {self.path}: {stderr.strip()}")
        return result.stdout

    @property
    def is_registry(self) -> bool:
        """Whether ``rrec release`` created this repository (only then may it replace the files)."""
        return (self.path / ".git" / _MARKER).is_file()

    def _require(self) -> None:
        if not self.exists:
            raise ReleaseError(
                f"{self.path} is not a release registry (no git repository there); check the path or run `rrec release --registry {self.path}` first"
            )

    def init(self) -> None:
        """Create the registry (an empty folder or a new path); an existing registry is kept.

        Any other git repository is refused: publishing replaces the working tree's files.
        """
        if self.exists:
            if not self.is_registry:
                raise ReleaseError(
                    f"{self.path} is a git repository that `rrec release` did not create, and releasing replaces its files; "
                    f"choose another --registry folder (a registry has the marker file .git/{_MARKER})"
                )
            return
        if self.path.exists() and any(self.path.iterdir()):
            raise ReleaseError(f"{self.path} is a non-empty folder but not a registry; choose an empty or new folder for --registry")
        self.path.mkdir(parents=True, exist_ok=True)
        self._git("init", "--quiet", "--initial-branch=main")
        (self.path / ".git" / _MARKER).write_text("created by rrec release\n", encoding="utf-8")

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Exclusive lock while publishing, so two releases cannot interleave their commits."""
        busy = ReleaseError(f"another release is being published to {self.path}; wait for it to finish")
        return exclusive_lock(self.path / ".git" / "rrec-release.lock", busy)

    def versions(self) -> list[str]:
        """Tags of published versions, oldest version first (semantic order)."""
        if not self.exists:
            return []
        tags = [t for t in self._git("tag", "--list", "v*").split() if _SEMVER.match(t)]
        return sorted(tags, key=parse_version)

    def has(self, version: str) -> bool:
        return version_tag(version) in self.versions()

    def previous(self, version: str) -> str | None:
        """The highest published version below ``version``, the base of its changelog."""
        current = parse_version(version)
        older = [tag for tag in self.versions() if parse_version(tag) < current]
        return older[-1] if older else None

    def read_file(self, version: str, name: str) -> bytes:
        """One file of a published version."""
        self._require()
        tag = version_tag(version)
        if tag not in self.versions():
            raise ReleaseError(f"version {tag} is not in registry {self.path}; available: {', '.join(self.versions()) or 'none'}")
        return self._git("show", f"{tag}:{name}", binary=True)

    def commit_of(self, version: str) -> str:
        """The commit a version's tag points to."""
        self._require()
        return self._git("rev-list", "-n", "1", version_tag(version)).strip()

    def manifest(self, version: str) -> dict[str, Any]:
        return json.loads(self.read_file(version, MANIFEST_NAME))

    def export(self, version: str, out: Path) -> Path:
        """Write the tree of tag ``version`` into the folder ``out`` (created; must be empty)."""
        self._require()
        tag = version_tag(version)
        if tag not in self.versions():
            raise ReleaseError(f"version {tag} is not in registry {self.path}; available: {', '.join(self.versions()) or 'none'}")
        archive = self._git("archive", "--format=tar", tag, binary=True)
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(out, filter="data")
        return out

    def publish(self, release_dir: Path, version: str, message: str) -> str:
        """Commit the content of ``release_dir`` as the registry's tree and tag it; return the commit.

        Refuses a version that is already tagged. The caller holds :meth:`lock`.
        """
        tag = version_tag(version)
        self.init()
        if tag in self.versions():
            raise ReleaseError(
                f"version {tag} already exists in registry {self.path}; published versions are immutable, release a new version"
            )
        for entry in self.path.iterdir():
            if entry.name == ".git":
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        shutil.copytree(release_dir, self.path, dirs_exist_ok=True)
        self._git("add", "--all")
        self._git("commit", "--quiet", "--allow-empty", "-m", message)
        self._git("tag", "-a", tag, "-m", message)
        commit = self._git("rev-parse", "HEAD").strip()
        log.info("published %s to registry %s (commit %s)", tag, self.path, commit[:12])
        return commit
