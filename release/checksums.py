"""sha256 of every file of a release, recorded in ``manifest.json`` and verified on pull."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
_CHUNK = 8 * 1024 * 1024


class ChecksumError(ValueError):
    """A release folder does not match its manifest (tampered, missing or unexpected files)."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of one file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def release_files(release_dir: Path) -> list[str]:
    """Relative POSIX paths of the files a manifest covers: all but the manifest and hidden paths.

    Hidden paths (``.git``, ``.cache/huggingface`` of a Hub download, ``.gitattributes``) are
    transport details, not release content.
    """
    root = Path(release_dir)
    found = []
    for path in root.rglob("*"):
        relative = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        if relative.as_posix() == MANIFEST_NAME:
            continue
        found.append(relative.as_posix())
    return sorted(found)


def file_checksums(release_dir: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"sha256": ..., "bytes": ...}}`` for every release file."""
    root = Path(release_dir)
    return {name: {"sha256": sha256_file(root / name), "bytes": (root / name).stat().st_size} for name in release_files(root)}


def read_manifest(release_dir: Path) -> dict[str, Any]:
    """The ``manifest.json`` of a release folder, or a :class:`ChecksumError` if there is none."""
    path = Path(release_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ChecksumError(f"{path} is missing: this is not a release folder, or the download is incomplete")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ChecksumError(f"{path} is not valid JSON ({exc}); the release is damaged, pull it again") from None


def verify_release(release_dir: Path) -> dict[str, Any]:
    """Check every file of a release folder against the sha256 recorded in its manifest.

    Refuses (:class:`ChecksumError`, naming the files) a file whose content differs, a listed
    file that is missing and a file the manifest does not list. Returns the manifest.
    """
    root = Path(release_dir)
    manifest = read_manifest(root)
    expected: dict[str, dict[str, Any]] = manifest.get("files") or {}
    if not expected:
        raise ChecksumError(f"{root / MANIFEST_NAME} lists no files; the release is damaged, pull it again")
    present = set(release_files(root))
    missing = sorted(set(expected) - present)
    unexpected = sorted(present - set(expected))
    tampered = sorted(name for name in set(expected) & present if sha256_file(root / name) != expected[name]["sha256"])
    problems = []
    if tampered:
        problems.append(f"checksum mismatch: {', '.join(tampered)}")
    if missing:
        problems.append(f"missing: {', '.join(missing)}")
    if unexpected:
        problems.append(f"not in the manifest: {', '.join(unexpected)}")
    if problems:
        version = manifest.get("tag") or manifest.get("version", "?")
        raise ChecksumError(
            f"release {version} in {root} does not match its manifest ({'; '.join(problems)}); do not use it, pull it again from a trusted source"
        )
    return manifest
