"""Fetch a released version from a local registry or the Hub and verify every checksum."""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

from release.checksums import ChecksumError, read_manifest, verify_release
from release.layout import ReleaseError
from release.registry import Registry, version_tag

log = logging.getLogger(__name__)


def is_local_source(source: str) -> bool:
    """A source is local when it names an existing path; otherwise it is a Hub id ``ORG/NAME``."""
    return Path(source).expanduser().exists()


def _fetch(source: str, tag: str, staging: Path) -> None:
    if is_local_source(source):
        registry = Registry(Path(source).expanduser())
        if not registry.exists:
            raise ReleaseError(
                f"{source} exists but is not a release registry (no git repository); pass a registry folder or a Hub id ORG/NAME"
            )
        registry.export(tag, staging)
        return
    if source.count("/") != 1:
        raise ReleaseError(f"{source!r} is neither an existing registry folder nor a Hub dataset id of the form ORG/NAME")
    try:
        from release import hub
    except ModuleNotFoundError as exc:
        raise ReleaseError(f"Hub support is not available in this installation ({exc.name} is missing)") from None
    hub.download_release(source, tag, staging)


def _already_pulled(out: Path, tag: str) -> dict[str, Any] | None:
    try:
        manifest = read_manifest(out)
    except ChecksumError:
        return None
    return verify_release(out) if manifest.get("tag") == tag else None


def pull_release(source: str, version: str, out: Path) -> Path:
    """Fetch version ``version`` of ``source`` into ``out`` and verify it against its manifest.

    ``source`` is a local registry folder or a Hub dataset id. The files land in a staging
    folder beside ``out`` and are moved into place only after every sha256 matched, so a
    tampered or incomplete download never appears at ``out``. An ``out`` that already holds
    the same verified version is kept; any other non-empty ``out`` is refused.
    """
    tag = version_tag(version)
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        if _already_pulled(out, tag) is not None:
            log.info("%s already holds a verified copy of %s", out, tag)
            return out
        raise ReleaseError(f"{out} is not empty and does not hold a verified {tag}; pass an empty or new folder as --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".tmp-pull-{out.name}-{uuid.uuid4().hex[:8]}"
    try:
        _fetch(source, tag, staging)
        manifest = verify_release(staging)
        if manifest.get("tag") != tag:
            raise ChecksumError(
                f"the manifest of {source} at {tag} says it is {manifest.get('tag')!r}; the source is inconsistent, do not use it"
            )
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("pulled %s of %s into %s (%d files verified)", tag, source, out, len(manifest["files"]))
    return out
