"""Load a released version with ``datasets``, from a local registry, a release folder or the Hub.

:func:`load_release` is the one documented way to load a local registry at a revision: it
honours the tag, or fails listing the versions that exist. ``datasets.load_dataset`` cannot do
that for a registry: given a local folder it ignores ``revision`` and git tags and reads the
working tree, which holds only the newest version. :func:`resolve_source` pins a source to one
exact version (a registry's newest tag when no revision is given) for callers that record what
they read, such as training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from release.checksums import read_manifest, verify_release
from release.layout import ReleaseError
from release.pull import is_local_source, pull_release
from release.registry import Registry, version_tag

DEFAULT_CACHE = "~/.cache/rrec"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetSource:
    """A source pinned to one version: what was asked for and exactly what is read."""

    dataset: str
    config: str
    revision: str | None
    kind: str  # "hub", "registry" or "folder"
    commit: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)


def resolve_source(dataset: str, config: str, revision: str | None) -> DatasetSource:
    """Pin ``dataset`` to one version: a registry's newest tag when ``revision`` is None.

    A registry revision that does not exist is a :class:`ReleaseError` listing the published
    versions; a pulled release folder names its own version (checked on loading); a Hub id keeps
    the revision asked for.
    """
    if not is_local_source(dataset):
        if dataset.count("/") != 1 or dataset.startswith((".", "/", "~")):
            raise ReleaseError(f"{dataset} is neither an existing registry or release folder nor a Hub dataset id ORG/NAME")
        return DatasetSource(dataset, config, revision, "hub")
    path = Path(dataset).expanduser().resolve()
    registry = Registry(path)
    if registry.exists:
        if revision is None:
            revision = registry.newest()
            if revision is None:
                raise ReleaseError(f"the registry {path} has no released version yet; publish one with `rrec release`")
            log.info("no revision given: using the newest version %s of %s", revision, path)
        tag = registry.require_version(revision)
        return DatasetSource(str(path), config, tag, "registry", registry.commit_of(tag))
    return DatasetSource(str(path), config, revision or read_manifest(path).get("tag"), "folder")


def cache_root(cache_dir: Path | str | None = None) -> Path:
    """Where pulled releases are kept: ``cache_dir``, else ``$RREC_CACHE``, else ``~/.cache/rrec``."""
    return Path(cache_dir or os.environ.get("RREC_CACHE") or DEFAULT_CACHE).expanduser()


def materialise(registry_path: Path, revision: str | None, cache_dir: Path | str | None = None) -> Path:
    """A verified folder of one tag of a local registry (the latest when ``revision`` is None), pulled once."""
    registry = Registry(registry_path)
    if revision is None:
        versions = registry.versions()
        if not versions:
            raise ReleaseError(f"registry {registry_path} has no released version yet")
        revision = versions[-1]
    tag = version_tag(revision)
    # Keyed by the tag's commit too: a registry recreated at the same path with the same tag
    # name must not be served from the old pull.
    key = hashlib.sha1(f"{Path(registry_path).resolve()}@{registry.commit_of(tag)}".encode()).hexdigest()[:16]
    return pull_release(str(registry_path), tag, cache_root(cache_dir) / "releases" / key / tag)


def _check_config(folder: Path, manifest: dict[str, Any], config: str) -> None:
    configs = sorted(manifest.get("row_counts", {}))
    if config not in configs:
        raise ReleaseError(f"release {folder} has no config {config!r}; available: {', '.join(configs)}")


def load_release(
    source: str | Path,
    config: str,
    revision: str | None = None,
    split: str | None = None,
    cache_dir: Path | str | None = None,
) -> Any:
    """``datasets.load_dataset`` of one config of a released version.

    ``source`` is a local registry (the tag ``revision`` is pulled into the cache and verified
    first; an unknown tag is a :class:`ReleaseError` listing the published versions; ``None``
    means the newest), a pulled release folder (verified; ``revision``, if given, must be its
    tag) or a Hub dataset id (``load_dataset(id, config, revision=revision)``). Returns a
    ``DatasetDict``, or a ``Dataset`` when ``split`` is given. ``cache_dir`` also holds the
    ``datasets`` Arrow cache.

    Use this, not ``datasets.load_dataset(registry_folder, revision=...)``, for a local
    registry: ``datasets`` ignores git tags and would silently read the newest version.
    """
    import datasets

    source = str(source)
    if not is_local_source(source):
        datasets_cache = str(cache_root(cache_dir) / "datasets") if cache_dir else None
        return datasets.load_dataset(source, config, revision=revision, split=split, cache_dir=datasets_cache)
    path = Path(source).expanduser()
    if Registry(path).exists:
        folder = materialise(path, revision, cache_dir)
        manifest = read_manifest(folder)  # pull_release verified every checksum
    else:
        folder = path
        manifest = verify_release(folder)
        if revision is not None and manifest.get("tag") != version_tag(revision):
            raise ReleaseError(f"{folder} holds release {manifest.get('tag')}, not {version_tag(revision)}; pull that version first")
    _check_config(folder, manifest, config)
    # datasets keys a local folder's Arrow cache by path and file times only; two releases
    # extracted within one second would share it. One cache per release content avoids that.
    content_key = hashlib.sha1(json.dumps(manifest.get("files", manifest), sort_keys=True, default=str).encode()).hexdigest()[:16]
    datasets_cache = str(cache_root(cache_dir) / "datasets" / content_key)
    return datasets.load_dataset(str(folder), config, split=split, cache_dir=datasets_cache)
