"""The local release registry: a git repository with one commit and one tag ``vX.Y.Z`` per version.

The working tree (branch ``main``) always holds the newest published version; every version
stays reachable through its tag. Versions are immutable and increase: publishing a tag that
exists, or one lower than the newest, is refused (an older version may be added as a tag only,
see :meth:`Registry.publish`). The git command line does the work (``git`` must be on PATH).

Crash safety. A release is built in a staging folder inside ``.git`` and committed from there
with a private index, so the working tree and ``main`` are untouched until the version's tag
exists. The steps, each safe to be killed at: write the staging folder; store the data files as
blobs (:meth:`Registry.store_blobs`, beside the card's writing); ``git add`` the rest into the
private index; write the tree and the commit object; create the tag (the moment of
publication); move ``main`` to it; replace the working tree (``git reset --hard``). The next
release takes the registry lock and calls :meth:`Registry.recover`, which removes staging
folders and git lock files left by a killed release and finishes a half-done working-tree
update, so a rerun completes the same version.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from core.stage import exclusive_lock
from release.checksums import MANIFEST_NAME
from release.layout import ReleaseError

log = logging.getLogger(__name__)

_MARKER = "rrec-registry"
STAGING_PREFIX = "rrec-release-"
_LOCK_NAME = "rrec-release.lock"
# Set only by the crash tests: the release process SIGKILLs itself (and the git it runs) at
# the named step, the way `kill -9` would stop it there.
CRASH_ENV = "RREC_TEST_CRASH_AT"
CRASH_POINTS = ("staged", "git-blobs", "git-add", "committed", "tagged", "working-tree")
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


def crash_point(step: str, holding: Path | None = None) -> None:
    """Kill this process (and its process group when it leads one) if the crash tests ask for ``step``.

    With ``holding`` (a git lock file), wait up to two seconds for a running git to take it, so
    the kill lands while git holds its lock, as a ``kill -9`` during ``git add`` would.
    """
    if os.environ.get(CRASH_ENV) != step:
        return
    deadline = time.monotonic() + 2.0
    while holding is not None and not holding.exists() and time.monotonic() < deadline:
        time.sleep(0.0005)
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


class Registry:
    """A git repository of releases at ``path``."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    @property
    def exists(self) -> bool:
        """Whether ``path`` is a registry (a folder with its own ``.git``)."""
        return (self.path / ".git").is_dir()

    @property
    def git_dir(self) -> Path:
        return self.path / ".git"

    def _start(
        self, args: tuple[str, ...], env: dict[str, str] | None = None, binary: bool = False, stdin: bool = False
    ) -> subprocess.Popen:
        full_env = {**os.environ, **(env or {})}
        for key, value in _IDENTITY.items():
            full_env.setdefault(key, value)
        command = ["git", "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false", *args]
        try:
            return subprocess.Popen(
                command,
                cwd=self.path,
                env=full_env,
                stdin=subprocess.PIPE if stdin else None,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=not binary,
            )
        except FileNotFoundError:
            raise ReleaseError("the `git` command is not installed; install git to use a local registry") from None

    def _finish(self, process: subprocess.Popen, args: tuple[str, ...], input: str | None = None) -> Any:
        stdout, stderr = process.communicate(input)
        if process.returncode != 0:
            message = stderr if isinstance(stderr, str) else stderr.decode(errors="replace")
            raise ReleaseError(f"git {' '.join(args)} failed in registry {self.path}: {message.strip()}")
        return stdout

    def _git(
        self, *args: str, binary: bool = False, env: dict[str, str] | None = None, crash_at: str | None = None, input: str | None = None
    ) -> Any:
        """Run git in the registry; ``crash_at`` names the crash point reached while git runs."""
        process = self._start(args, env, binary, stdin=input is not None)
        if crash_at:
            index = (env or {}).get("GIT_INDEX_FILE", str(self.git_dir / "index"))
            crash_point(crash_at, holding=Path(index).with_suffix(".lock"))
        return self._finish(process, args, input)

    def store_blobs(self, root: Path, names: list[str], processes: int | None = None) -> dict[str, str]:
        """Write the files ``names`` (POSIX paths under ``root``) into the object store as `git add`
        would; return their blob ids by name.

        Up to ``processes`` git processes (default: one per core) hash them at once, the largest
        files spread first; :meth:`publish` takes the ids instead of hashing the files again. A
        release can so store its data files while it writes its card. A kill leaves only objects
        that nothing refers to, which git's garbage collection drops.
        """
        if not names:
            return {}
        root = Path(root).resolve()  # git runs in the registry, not in this process's folder
        groups: list[list[str]] = [[] for _ in range(max(1, min(processes or os.cpu_count() or 1, len(names))))]
        loads = [0] * len(groups)
        sizes = {name: (root / name).stat().st_size for name in names}
        for name in sorted(names, key=lambda n: (-sizes[n], n)):
            emptiest = loads.index(min(loads))
            groups[emptiest].append(name)
            loads[emptiest] += sizes[name]
        # The data files are compressed Parquet: zlib gains nothing on them and took about two
        # thirds of the hashing (the object ids do not depend on it).
        args = [
            ("-c", "core.compression=0", "hash-object", "-w", "--no-filters", "--", *(str(root / n) for n in group)) for group in groups
        ]
        running = [(group, arguments, self._start(arguments)) for group, arguments in zip(groups, args, strict=True) if group]
        crash_point("git-blobs")
        ids: dict[str, str] = {}
        for group, arguments, process in running:
            ids.update(zip(group, self._finish(process, arguments).split(), strict=True))
        return ids

    @property
    def is_registry(self) -> bool:
        """Whether ``rrec release`` created this repository (only then may it replace the files)."""
        return (self.git_dir / _MARKER).is_file()

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
        (self.git_dir / _MARKER).write_text("created by rrec release\n", encoding="utf-8")

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Exclusive lock while publishing, so two releases cannot interleave their commits.

        The lock is an advisory ``flock``: the kernel drops it when its holder dies, even by
        ``kill -9``, so a killed release never blocks the next one.
        """
        busy = ReleaseError(f"another release is being published to {self.path}; wait for it to finish")
        return exclusive_lock(self.git_dir / _LOCK_NAME, busy)

    @contextlib.contextmanager
    def publishing(self) -> Iterator[Path]:
        """Hold :meth:`lock`, :meth:`recover` from a killed release, and yield a fresh staging folder.

        The staging folder (``.git/rrec-release-*``) is removed on the way out, and by the next
        release if this process is killed.
        """
        self.init()
        with self.lock():
            self.recover()
            staging = self.git_dir / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
            staging.mkdir()
            try:
                yield staging
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    def recover(self) -> list[str]:
        """Undo what a killed release left behind; return what was done (also logged).

        Call it holding :meth:`lock`: no other release of this registry runs then, so staging
        folders and git lock files are leftovers of a dead process. Removes them, moves ``main``
        to the newest version when a release was killed between its tag and that move, and
        restores the working tree of the newest version when its replacement was interrupted.
        A ``main`` that no version tag names is not guessed at: the error says what to run.
        """
        done: list[str] = []
        for leftover in sorted(self.git_dir.glob(f"{STAGING_PREFIX}*")):
            shutil.rmtree(leftover, ignore_errors=True)
            done.append(f"removed the staging folder {leftover.name} of a killed release")
        locks = [self.git_dir / "index.lock", self.git_dir / "HEAD.lock", self.git_dir / "packed-refs.lock"]
        locks += sorted((self.git_dir / "refs").rglob("*.lock"))
        for lock in locks:
            if lock.is_file():
                lock.unlink()
                done.append(f"removed the stale git lock {lock.relative_to(self.git_dir)} of a killed release")
        versions = self.versions()
        head = self._head()
        if versions:
            newest = versions[-1]
            newest_commit = self.commit_of(newest)
            tagged = {self.commit_of(tag): tag for tag in versions}
            if head is None:  # the first release was killed between its tag and main
                self._git("update-ref", "HEAD", newest_commit)
                done.append(f"pointed main at the first version {newest}")
                head = newest_commit
            if head not in tagged:
                raise ReleaseError(
                    f"the main branch of registry {self.path} is at commit {head[:12]}, which no version tag names "
                    f"(a commit made by hand or by an interrupted older rrec); to go back to the newest version run "
                    f"`git -C {self.path} reset --hard {newest}` and retry"
                )
            if head != newest_commit:
                self._git("update-ref", "HEAD", newest_commit, head)
                done.append(f"moved main from {tagged[head]} to the newest version {newest}")
            if self._git("status", "--porcelain", "--untracked-files=all").strip():
                self._git("reset", "--hard", "--quiet", newest_commit)
                self._git("clean", "-d", "--force", "--quiet")
                done.append(f"restored the working tree of {newest}")
        elif head is not None:
            raise ReleaseError(
                f"registry {self.path} has a commit ({head[:12]}) but no version tag; it was changed by hand or by an "
                f"interrupted older rrec: remove the folder (it holds no version) and release again"
            )
        for line in done:
            log.warning("registry %s: %s", self.path, line)
        return done

    def _head(self) -> str | None:
        try:
            return self._git("rev-parse", "--verify", "--quiet", "HEAD^{commit}").strip() or None
        except ReleaseError:
            return None

    def versions(self) -> list[str]:
        """Tags of published versions, oldest version first (semantic order)."""
        if not self.exists:
            return []
        tags = [t for t in self._git("tag", "--list", "v*").split() if _SEMVER.match(t)]
        return sorted(tags, key=parse_version)

    def has(self, version: str) -> bool:
        """Whether ``version`` is published (tagged) in this registry."""
        return version_tag(version) in self.versions()

    def newest(self) -> str | None:
        """The highest published version, the one the working tree holds; None when there is none."""
        versions = self.versions()
        return versions[-1] if versions else None

    def previous(self, version: str) -> str | None:
        """The highest published version below ``version``, the base of its changelog."""
        current = parse_version(version)
        older = [tag for tag in self.versions() if parse_version(tag) < current]
        return older[-1] if older else None

    def require_version(self, version: str) -> str:
        """The tag of ``version`` if it is published; else a :class:`ReleaseError` listing the versions that are."""
        self._require()
        tag = version_tag(version)
        versions = self.versions()
        if tag not in versions:
            raise ReleaseError(f"version {tag} is not in registry {self.path}; available: {', '.join(versions) or 'none'}")
        return tag

    def read_file(self, version: str, name: str) -> bytes:
        """One file of a published version."""
        return self._git("show", f"{self.require_version(version)}:{name}", binary=True)

    def commit_of(self, version: str) -> str:
        """The commit a version's tag points to."""
        return self._git("rev-list", "-n", "1", self.require_version(version)).strip()

    def manifest(self, version: str) -> dict[str, Any]:
        """The ``manifest.json`` of a published version."""
        return json.loads(self.read_file(version, MANIFEST_NAME))

    def export(self, version: str, out: Path) -> Path:
        """Write the tree of tag ``version`` into the folder ``out`` (created; must be empty)."""
        archive = self._git("archive", "--format=tar", self.require_version(version), binary=True)
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(out, filter="data")
        return out

    def check_order(self, version: str, allow_older: bool = False) -> None:
        """Refuse a new version that is not above the newest one, unless ``allow_older``.

        An existing version passes (it is compared with the data by the caller).
        """
        tag = version_tag(version)
        newest = self.newest()
        if newest is None or tag in self.versions() or parse_version(tag) > parse_version(newest) or allow_older:
            return
        major, minor, patch = parse_version(newest)
        raise ReleaseError(
            f"version {tag} is lower than the newest version {newest} of registry {self.path}; versions must increase: "
            f"release {major}.{minor}.{patch + 1} or higher, or pass --allow-older to add {tag} as a tag only "
            "(the working tree and the CHANGELOG stay at the newest version)"
        )

    def publish(self, release_dir: Path, version: str, message: str, stored: Mapping[str, str] | None = None) -> str:
        """Commit the content of ``release_dir`` as version ``version`` and tag it; return the commit.

        ``stored`` maps files of ``release_dir`` (POSIX paths) that :meth:`store_blobs` has
        already written to their blob ids; they are not read again.

        ``release_dir`` lies in the staging folder of :meth:`publishing` (the caller holds the
        lock). A version above the newest becomes the new ``main`` and working tree; an older
        one (allowed by :meth:`check_order`) is a tag only, on top of the version below it. A
        version that is already tagged is refused.
        """
        stored = stored or {}
        tag = version_tag(version)
        if tag in self.versions():
            raise ReleaseError(
                f"version {tag} already exists in registry {self.path}; published versions are immutable, release a new version"
            )
        newest = self.newest()
        moves_main = newest is None or parse_version(tag) > parse_version(newest)
        parent = self._head() if moves_main else (self.commit_of(below) if (below := self.previous(tag)) else None)
        staged = Path(release_dir).resolve()
        git_env = {"GIT_INDEX_FILE": str(staged.parent / "index"), "GIT_WORK_TREE": str(staged)}
        if stored:  # already in the object store (store_blobs): into the index without reading them
            entries = "".join(f"100644 {blob}\t{name}\n" for name, blob in sorted(stored.items()))
            self._git("update-index", "--add", "--index-info", env=git_env, input=entries)
        excluded = [f":(exclude,literal){name}" for name in sorted(stored)]
        self._git("-c", "core.compression=0", "add", "--all", "--", ".", *excluded, env=git_env, crash_at="git-add")
        tree = self._git("write-tree", env=git_env).strip()
        commit = self._git("commit-tree", tree, *(["-p", parent] if parent else []), "-m", message).strip()
        crash_point("committed")
        self._git("tag", "-a", tag, commit, "-m", message)
        crash_point("tagged")
        if moves_main:
            self._git("update-ref", "HEAD", commit, *([parent] if parent else []))
            self._git("reset", "--hard", "--quiet", commit, crash_at="working-tree")
            self._git("clean", "-d", "--force", "--quiet")
        log.info("published %s to registry %s (commit %s%s)", tag, self.path, commit[:12], "" if moves_main else ", tag only")
        return commit
