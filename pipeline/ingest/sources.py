"""Where ingest's input comes from: named inputs expanded into files, their hashes and provenance.

A user names inputs as local paths, folders, globs, fsspec URLs (``file://``, ``s3://`` ...) or
``hub:<Domain>`` (a file of the McAuley-Lab/Amazon-Reviews-2023 dataset repository, fetched
with ``huggingface_hub``). :func:`expand_inputs` turns those names into a sorted list of
:class:`SourceFile`; the position in that list is the file's ``src_file``.

:func:`source_provenance` says what the inputs are, for the manifest and the data card:
synthetic when every review file has the sidecar ``<file>.provenance.json`` that ``rrec sample``
writes beside it, real otherwise (with the Hub repository and revision of ``hub:`` inputs).
"""

from __future__ import annotations

import glob
import json
import os
import re
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import PurePosixPath
from typing import Any

import fsspec
import xxhash

from core.hashing import hash_stream
from pipeline.ingest.settings import IngestSettings

HUB_PREFIX = "hub:"
HUB_FILES = {
    "reviews": "raw/review_categories/{domain}.jsonl",
    "meta": "raw/meta_categories/meta_{domain}.jsonl",
}
SIDECAR_SUFFIX = ".provenance.json"
"""Name suffix of the provenance sidecar ``rrec sample`` writes beside a generated file."""
_MAGIC = {
    b"\x1f\x8b": "gzip",
    b"PAR1": "parquet",
    b"BZh": "bzip2",
    b"\xfd7zXZ": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
}
_GLOB_CHARS = re.compile(r"[*?\[]")


class InputError(ValueError):
    """An input that cannot be read as named; the message says what to do instead."""


@dataclass(frozen=True)
class SourceFile:
    """One input file of ingest, as it will be read and reported."""

    name: str
    """How the file is reported (``rejects.source_file``, the manifest): the path or URL as named."""
    url: str
    """What ``fsspec.open`` opens: a local path or a URL."""
    kind: str
    """``reviews`` or ``meta``."""
    index: int
    """Position in the sorted expanded list of its kind: ``interactions.src_file``."""
    format: str
    """``jsonl``, ``gzip`` (gzip-compressed JSONL) or ``parquet``."""
    size: int
    """Size in bytes as stored (compressed for gzip)."""
    hub_repo: str | None = None
    """The Hub dataset repository of a ``hub:`` input."""
    hub_revision: str | None = None
    """The commit of that repository the file was downloaded at."""


@dataclass(frozen=True)
class _Found:
    name: str
    url: str
    hub_repo: str | None = None
    hub_revision: str | None = None


# -- naming inputs -------------------------------------------------------------------------


def _hub_download(domain: str, kind: str, repo: str) -> _Found:
    """Fetch one file of the Amazon Reviews 2023 dataset repo (or take it from the cache)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    if not re.fullmatch(r"[A-Za-z0-9_]+", domain):
        raise InputError(f"'{HUB_PREFIX}{domain}' is not a domain name; use e.g. {HUB_PREFIX}Grocery_and_Gourmet_Food")
    filename = HUB_FILES[kind].format(domain=domain)
    name = f"hf://datasets/{repo}/{filename}"
    try:
        local = hf_hub_download(repo_id=repo, filename=filename, repo_type="dataset")
    except (OfflineModeIsEnabled, LocalEntryNotFoundError):
        raise InputError(
            f"cannot fetch {name}: the Hugging Face Hub is not reachable (offline, or HF_HUB_OFFLINE=1) and the file "
            "is not in the local cache; connect and retry, or download the file elsewhere and pass its path"
        ) from None
    except (EntryNotFoundError, RepositoryNotFoundError):
        raise InputError(f"{name} does not exist; check the domain name (case matters) and --hub-repo") from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", "?")
        raise InputError(f"cannot fetch {name}: the Hub answered HTTP {status}; retry later or pass a local copy") from None
    except OSError as exc:
        raise InputError(
            f"cannot fetch {name}: {type(exc).__name__} ({exc.strerror or 'network error'}); check the network or pass a local copy"
        ) from None
    return _Found(name, local, repo, _snapshot_revision(local))


def _snapshot_revision(local_path: str) -> str | None:
    """The commit a file of the Hugging Face cache belongs to (``.../snapshots/<commit>/...``)."""
    parts = PurePosixPath(local_path.replace(os.sep, "/")).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def _sniff_format(url: str) -> str:
    with fsspec.open(url, "rb") as handle:
        head = handle.read(8)
    for magic, fmt in _MAGIC.items():
        if head.startswith(magic):
            if fmt in ("gzip", "parquet"):
                return fmt
            raise InputError(
                f"{url} is {fmt}-compressed; ingest reads plain or gzip JSONL and Parquet: decompress it or recompress with gzip"
            )
    return "jsonl"


def _expand_one(pattern: str, kind: str, hub_repo: str) -> list[_Found]:
    """Every file one named input stands for (a folder: the files in it)."""
    if pattern.startswith(HUB_PREFIX):
        return [_hub_download(pattern[len(HUB_PREFIX) :], kind, hub_repo)]
    if "://" in pattern:
        fs, path = fsspec.core.url_to_fs(pattern)
        paths = fs.glob(path) if _GLOB_CHARS.search(path) else ([path] if fs.exists(path) else [])
        files = [f for p in paths for f in (sorted(fs.find(p)) if fs.isdir(p) else [p]) if _is_data(f)]
        return [_Found(fs.unstrip_protocol(f), fs.unstrip_protocol(f)) for f in files] if files else _no_match(pattern, kind)
    expanded = os.path.expanduser(pattern)
    paths = glob.glob(expanded, recursive=True) if _GLOB_CHARS.search(expanded) else [expanded]
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
        elif os.path.isfile(path):
            files.append(path)
    files = [f for f in files if _is_data(f)]
    return [_Found(f, f) for f in files] if files else _no_match(pattern, kind)


def _is_data(path: str) -> bool:
    """Dot files (``.DS_Store``, ``.gitattributes``, partial downloads) and provenance sidecars
    are never data."""
    base = path.rstrip("/").rsplit("/", 1)[-1]
    return not base.startswith(".") and not base.endswith(SIDECAR_SUFFIX)


def _no_match(pattern: str, kind: str) -> list[_Found]:
    raise InputError(f"no {kind} file matches '{pattern}'; check the path (quote globs so the shell does not expand them)")


def expand_inputs(patterns: Iterable[str], kind: str, hub_repo: str) -> list[SourceFile]:
    """Every file the named inputs stand for, sorted by name, numbered, with its format.

    ``patterns`` are local paths, folders (every file inside, recursively, except dot files and
    provenance sidecars), globs (``**`` recurses), fsspec URLs (globs and folders allowed) or
    ``hub:<Domain>``; ``kind`` is ``reviews`` or ``meta`` (it picks the Hub file).
    """
    found: dict[str, _Found] = {}
    for pattern in patterns:
        for item in _expand_one(str(pattern), kind, hub_repo):
            found.setdefault(item.name, item)
    sources = []
    for index, name in enumerate(sorted(found)):
        item = found[name]
        fs, path = fsspec.core.url_to_fs(item.url)
        sources.append(
            SourceFile(
                name=name,
                url=item.url,
                kind=kind,
                index=index,
                format=_sniff_format(item.url),
                size=int(fs.size(path)),
                hub_repo=item.hub_repo,
                hub_revision=item.hub_revision,
            )
        )
    return sources


_SHARD = re.compile(r"^(full|train|part|data)[-_]?\d*(-of-\d+)?$|^\d+$")
_EXTENSIONS = (".gz", ".jsonl", ".json", ".parquet")


def domain_from_name(name: str) -> str:
    """The Amazon 2023 domain a file name stands for.

    ``Grocery_and_Gourmet_Food.jsonl.gz`` and ``meta_Office_Products.jsonl`` name their domain;
    a Hub Parquet shard (``raw_review_All_Beauty/full-00000-of-00001.parquet``) is named by its
    folder.
    """
    path = name.split("://", 1)[-1].rstrip("/")
    base = path.rsplit("/", 1)[-1]
    stem = base
    while stem.lower().endswith(_EXTENSIONS):
        stem = stem[: stem.lower().rfind(".")]
    if _SHARD.match(stem) and "/" in path:
        stem = path.rsplit("/", 2)[-2]
    for prefix in ("raw_review_", "raw_meta_", "meta_"):
        if stem.startswith(prefix):
            stem = stem[len(prefix) :]
    return stem


# -- hashes and provenance -------------------------------------------------------------------

_HASHES: dict[tuple[str, str], str] = {}
_HASHES_LOCK = threading.Lock()


def content_hash(url: str) -> str:
    """Content hash (xxh3-128) of a file's bytes, the digest ``core.stage.hash_file`` gives.

    The hash is remembered for the file's identity as its file system reports it (fsspec's
    ``ukey``: size and modification time, an object store's ETag), so the checks one command
    makes before and after starting a cluster read a large input, local or remote, once.
    """
    fs, path = fsspec.core.url_to_fs(url)
    try:
        key: tuple[str, str] | None = (url, str(fs.ukey(path)))
    except (OSError, NotImplementedError, ValueError):
        key = None
    with _HASHES_LOCK:
        if key is not None and key in _HASHES:
            return _HASHES[key]
    with fs.open(path, "rb") as handle:
        digest = hash_stream(handle)
    if key is not None:
        with _HASHES_LOCK:
            _HASHES[key] = digest
    return digest


def read_sidecar(source: SourceFile) -> dict[str, Any] | None:
    """The provenance sidecar ``<file>.provenance.json`` beside ``source``, or None."""
    url = source.url + SIDECAR_SUFFIX
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        return None
    try:
        with fs.open(path, "rb") as handle:
            sidecar = json.loads(handle.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{url} is not a JSON provenance record; regenerate the data with `rrec sample` or delete the file") from None
    if not isinstance(sidecar, dict):
        raise InputError(f"{url} is not a JSON object; regenerate the data with `rrec sample` or delete the file")
    return sidecar


@dataclass
class IngestSources:
    """The expanded inputs of one ingest run and the domain they belong to."""

    reviews: list[SourceFile]
    meta: list[SourceFile]
    domain: str

    @property
    def every(self) -> list[SourceFile]:
        """Review files, then metadata files."""
        return self.reviews + self.meta

    @cached_property
    def input_hashes(self) -> dict[str, str]:
        """Content hash of every input file, keyed ``<kind>[<index>] <name>`` (computed once).

        Files are hashed in parallel threads (the hash releases the GIL on large buffers) by the
        command process, so the check for an unchanged rerun needs no cluster.
        """
        with ThreadPoolExecutor(max_workers=min(8, max(1, len(self.every)))) as pool:
            digests = list(pool.map(content_hash, [s.url for s in self.every]))
        return {_hash_key(s): digest for s, digest in zip(self.every, digests)}

    @cached_property
    def sidecars(self) -> list[dict[str, Any] | None]:
        """The provenance sidecar of each review file (None where there is none)."""
        return [read_sidecar(source) for source in self.reviews]

    def sidecar_hashes(self) -> dict[str, str]:
        """A digest of each sidecar, so a changed provenance record reruns the stage."""
        return {
            f"provenance {source.name}": xxhash.xxh3_128_hexdigest(json.dumps(sidecar, sort_keys=True).encode())
            for source, sidecar in zip(self.reviews, self.sidecars)
            if sidecar is not None
        }

    def provenance(self) -> dict[str, Any]:
        """The ``source`` of the manifest entry: synthetic or real, and every file's identity.

        Synthetic when every review file has a sidecar of kind ``synthetic`` (``synthetic`` is
        then the first file's sidecar); real otherwise, with the Hub repository and revision of
        ``hub:`` inputs.
        """
        synthetic = bool(self.sidecars) and all(s is not None and s.get("kind") == "synthetic" for s in self.sidecars)
        return {
            "kind": "synthetic" if synthetic else "real",
            "synthetic": self.sidecars[0] if synthetic else None,
            "files": [
                {
                    "name": s.name,
                    "role": s.kind,
                    "bytes": s.size,
                    "xxh3": self.input_hashes[_hash_key(s)],
                    "hub_repo": s.hub_repo,
                    "hub_revision": s.hub_revision,
                }
                for s in self.every
            ],
        }


def _hash_key(source: SourceFile) -> str:
    return f"{source.kind}[{source.index}] {source.name}"


def resolve_sources(settings: IngestSettings) -> IngestSources:
    """Expand the named inputs (downloading ``hub:`` files) and settle the domain name.

    Raises :class:`InputError` with a one-line explanation when an input matches nothing,
    cannot be fetched, or the file names disagree on the domain.
    """
    reviews = expand_inputs(settings.reviews, "reviews", settings.hub_repo)
    meta = expand_inputs(settings.meta, "meta", settings.hub_repo)
    if settings.domain:
        return IngestSources(reviews, meta, settings.domain)
    named = sorted({domain_from_name(source.name) for source in reviews + meta})
    if len(named) != 1:
        raise InputError(f"the input file names suggest several domains ({', '.join(named)}); pass --domain NAME")
    return IngestSources(reviews, meta, named[0])
