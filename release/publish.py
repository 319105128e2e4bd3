"""Build a release from validated run folders, record it in the local registry, optionally push it.

Order of work: refuse runs without a clean validation, write the data shards, compare with an
existing tag of the same version (unchanged content is "already released", changed content is
refused: versions are immutable), then write the validation summary, card and figures,
CHANGELOG (against the previous version in the registry) and the manifest with the sha256 of
every file, commit and tag in the registry, and push to the Hub when asked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil
from pydantic import Field

from core.config import StageSettings
from core.hashing import HASH_ALGORITHM, code_version
from core.stage import RunDir, out_of_space_is
from datacards.card import CardSettings, DrawnFigures, build_card, draw_figures
from datacards.statistics import DomainStatistics, filter_summary
from release.builder import stream_release
from release.changelog import CHANGELOG_NAME, diff_releases, render_changelog, render_section
from release.checksums import MANIFEST_NAME, file_checksums, release_files, sha256_file
from release.layout import DomainRelease, DomainSource, ReleaseError, check_domains, write_validation
from release.registry import Registry, crash_point, parse_version, version_tag

log = logging.getLogger(__name__)

VALIDATION_DIR = "validation"
# The reports `rrec validate` renders into RUN/validation/ (validation.runner): Data Docs and GX results.
DATA_DOCS_DIR = "data_docs"
RESULTS_DIR = "results"


# The ingest stage fingerprints its input files with core.stage.hash_file.
SOURCE_HASH = HASH_ALGORITHM


class ReleaseSettings(StageSettings):
    """Settings of ``rrec release`` (config section ``release``)."""

    version: str = "1.0.0"
    shard_rows: int = 100_000
    partition_rows: int = Field(20_000, ge=1, description="rows a release task holds at a time (the release's memory per worker thread)")
    push: bool = False
    repo_id: str | None = None
    private: bool = False
    allow_older: bool = Field(
        False,
        description="publish a version lower than the newest as a tag only (the working tree and CHANGELOG stay at the newest)",
    )
    max_memory_gb: float | None = Field(
        None,
        gt=0,
        description="refuse a release whose rows would need more memory than this (GiB); default: the memory available when it starts",
    )


@dataclass(frozen=True)
class ReleaseResult:
    """What :func:`release_runs` did."""

    tag: str
    registry: Path
    status: Literal["released", "already_released"]
    commit: str
    manifest: dict[str, Any]
    hub_commit: str | None = None


def _data_checksums(files: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {name: info["sha256"] for name, info in files.items() if name.startswith("data/")}


def source_checksums(domain: DomainRelease) -> dict[str, str]:
    """Content hashes of the ingested source files, by file name (local folders are not published)."""
    inputs = (domain.stages.get("ingest") or {}).get("inputs") or {}
    return {Path(name).name: digest for name, digest in sorted(inputs.items())}


def manifest_core(
    domains: list[DomainRelease],
    settings: ReleaseSettings,
    card_settings: CardSettings,
    previous_tag: str | None,
    provenance: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Everything the manifest says except the file checksums (which cover the changelog too).

    ``provenance`` maps each config to its run's provenance chain (``RunDir.provenance()``:
    per stage the fingerprint, code version, settings, inputs, consumed upstream outputs and
    outputs, and the ingest stage's ``source``), so a pulled version says what produced it.
    """
    row_counts: dict[str, dict[str, int]] = {}
    schema: dict[str, dict[str, str]] = {}
    filters: dict[str, dict[str, Any]] = {}
    for domain in domains:
        row_counts[domain.config] = domain.row_counts()
        row_counts[domain.items_config] = {"items": domain.items.num_rows}
        schema[domain.config] = {f.name: str(f.type) for f in next(iter(domain.splits.values())).schema}
        schema[domain.items_config] = {f.name: str(f.type) for f in domain.items.schema}
        annotated, passed, rate, reasons = filter_summary(domain.stages.get("filter"))
        filters[domain.config] = {
            "annotated": annotated,
            "passed": passed,
            "filter_rate": rate,
            "rejects_by_reason": reasons,
            "train_without_rationale": domain.train_without_rationale,
        }
    return {
        "name": card_settings.pretty_name,
        "version": ".".join(str(p) for p in parse_version(settings.version)),
        "tag": version_tag(settings.version),
        "previous_version": previous_tag,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code_version": code_version(),
        "config": {
            "release": settings.model_dump(include={"version", "shard_rows", "repo_id"}),
            "card": card_settings.model_dump(),
            "stages": {
                d.config: {stage: _public_config(entry.get("config", {})) for stage, entry in sorted(d.stages.items())} for d in domains
            },
        },
        "sources": {d.config: {"domain": d.domain, "hash": SOURCE_HASH, "files": source_checksums(d)} for d in domains},
        "row_counts": row_counts,
        "schema": schema,
        "filter": filters,
        "validation": {
            d.config: {"critical_failures": d.validation["critical_failures"], "success": d.validation["success"]} for d in domains
        },
        "provenance": provenance or {},
    }


def _write_changelog(release_dir: Path, manifest: dict[str, Any], registry: Registry, previous_tag: str | None) -> None:
    date = manifest["created_at"][:10]
    if previous_tag is None:
        text = render_changelog(render_section(manifest["tag"], date, manifest, None, None), None)
    else:
        with tempfile.TemporaryDirectory(prefix="rrec-previous-", dir=release_dir.parent) as tmp:
            previous_dir = registry.export(previous_tag, Path(tmp) / previous_tag)
            previous = registry.manifest(previous_tag)
            diff = diff_releases(previous_dir, previous, release_dir, manifest)
            older = (previous_dir / CHANGELOG_NAME).read_text(encoding="utf-8") if (previous_dir / CHANGELOG_NAME).exists() else None
        text = render_changelog(render_section(manifest["tag"], date, manifest, previous_tag, diff), older)
    (release_dir / CHANGELOG_NAME).write_text(text, encoding="utf-8")


def build_release(
    domains: list[DomainRelease],
    release_dir: Path,
    settings: ReleaseSettings,
    card_settings: CardSettings,
    registry: Registry,
    provenance: dict[str, dict[str, Any]] | None = None,
    drawn: dict[str, DrawnFigures] | None = None,
) -> dict[str, Any]:
    """Write the complete release folder (data already written); return its manifest.

    Data files whose sha256 the builder computed as it wrote them (``DomainRelease.files``)
    are not read again; every other file is hashed here. ``drawn``: figures already drawn
    into ``release_dir`` (see :func:`datacards.card.build_card`).
    """
    tag = version_tag(settings.version)
    previous_tag = registry.previous(tag)
    write_validation(domains, release_dir)
    build_card(domains, release_dir, tag, card_settings, repo_id=settings.repo_id, release=rebuild_settings(settings), drawn=drawn)
    manifest = manifest_core(domains, settings, card_settings, previous_tag, provenance)
    _write_changelog(release_dir, manifest, registry, previous_tag)
    known = {name: info for domain in domains for name, info in domain.files.items()}
    manifest["files"] = {
        name: known.get(name) or {"sha256": sha256_file(release_dir / name), "bytes": (release_dir / name).stat().st_size}
        for name in release_files(release_dir)
    }
    (release_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return manifest


def _file_name(location: str) -> str:
    """A local path's file name; a URL (``hub:``, ``s3://``, ...) is kept whole."""
    return location if ":" in location.split("/", 1)[0] else Path(location).name


def _public_config(config: dict[str, Any]) -> dict[str, Any]:
    """A stage's recorded settings with local input paths cut to their file names (folders stay private)."""
    return {
        k: [_file_name(str(v)) for v in value] if k in ("reviews", "meta") and isinstance(value, list) else value
        for k, value in config.items()
    }


def public_provenance(provenance: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A run's provenance chain as published: local input paths become file names.

    The release says which files, with their content hashes, produced it, not the folders they
    sat in on the machine that built it (as ``sources`` always did).
    """
    public = {}
    for stage, entry in provenance.items():
        entry = dict(entry)
        entry["config"] = _public_config(entry.get("config") or {})
        entry["inputs"] = {_public_input_key(key): digest for key, digest in (entry.get("inputs") or {}).items()}
        public[stage] = entry
    return public


def _public_input_key(key: str) -> str:
    """``reviews[0] /home/me/raw/X.jsonl`` -> ``reviews[0] X.jsonl``; a key without a path is kept."""
    label, _, location = key.partition(" ")
    return f"{label} {_file_name(location)}" if location else _file_name(key)


def rebuild_settings(settings: ReleaseSettings) -> dict[str, Any]:
    """The ``release`` config section that rebuilds this version (what the card's rebuild config shows)."""
    return settings.model_dump(mode="json", include={"version", "shard_rows"})


def copy_validation_reports(sources: list[DomainSource], release_dir: Path) -> None:
    """Copy each run's rendered Data Docs and GX results into ``validation/<config>/`` of the release.

    Hidden files (GX store bookkeeping) are left out: they are not part of the report.
    """
    for source in sources:
        validation = Path(source.run) / VALIDATION_DIR
        for report in (DATA_DOCS_DIR, RESULTS_DIR):
            folder = validation / report
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*")):
                relative = path.relative_to(folder)
                if path.is_file() and not any(part.startswith(".") for part in relative.parts):
                    target = release_dir / VALIDATION_DIR / source.config / report / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target)


def _hub() -> Any:
    try:
        from release import hub
    except ModuleNotFoundError as exc:
        raise ReleaseError(f"Hub support is not available in this installation ({exc.name} is missing)") from None
    return hub


def _check_push(registry: Registry, tag: str, settings: ReleaseSettings) -> None:
    """Refuse a push that cannot succeed before any work: offline mode, or a version below the newest."""
    _hub().require_online(f"pushing {tag} to {settings.repo_id}")
    newest = registry.newest()
    if newest is not None and parse_version(tag) < parse_version(newest):
        raise ReleaseError(
            f"{tag} is older than {newest}: --allow-older adds it to the local registry as a tag only, "
            "but on the Hub a push would move the main branch back; release it without --push"
        )


def _push(release_dir: Path, settings: ReleaseSettings, tag: str) -> str | None:
    if not settings.push:
        return None
    hub = _hub()
    if tag in hub.list_versions(settings.repo_id):
        log.info("%s is already on the Hub as %s; nothing to push", tag, settings.repo_id)
        return None
    return hub.push_release(release_dir, settings.repo_id, tag, private=settings.private)


def release_runs(
    runs: list[Path], registry_path: Path, settings: ReleaseSettings, card_settings: CardSettings | None = None, client: Any = None
) -> ReleaseResult:
    """Release validated run folders as version ``settings.version`` into the registry at ``registry_path``.

    Refuses a run whose validation is missing or has a critical failure, a version lower than
    the newest one (unless ``settings.allow_older``: then it is published as a tag only) and an
    existing version whose content differs (versions are immutable). Releasing an existing
    version with unchanged data again returns ``status="already_released"`` (and pushes it if
    asked and the Hub lacks it). A release killed at any step is finished or undone by the next
    one (:meth:`Registry.recover`). The data is built partition by partition
    (:func:`release.builder.stream_release`) on ``client``'s Dask workers, or in this process without one.
    """
    card_settings = card_settings or CardSettings()
    tag = version_tag(settings.version)
    if settings.push and not settings.repo_id:
        raise ReleaseError("--push needs --repo-id ORG/NAME (the Hub dataset repository to publish to)")
    registry = Registry(registry_path)
    registry.check_order(tag, settings.allow_older)  # before the runs are read: a cheap refusal
    if settings.push:
        _check_push(registry, tag, settings)
    memory_limit = int(settings.max_memory_gb * 2**30) if settings.max_memory_gb else psutil.virtual_memory().available
    sources = check_domains([Path(run) for run in runs], memory_limit, settings.partition_rows)
    with _out_of_space(registry, tag), registry.publishing() as staging:
        registry.check_order(tag, settings.allow_older)
        release_dir = staging / tag
        drawn: dict[str, DrawnFigures] = {}

        def draw(statistics: DomainStatistics) -> None:  # while the cluster writes the domain's shards
            drawn[statistics.config] = draw_figures(statistics, release_dir)

        domains = stream_release(sources, release_dir, settings.shard_rows, settings.partition_rows, client, while_writing=draw)
        crash_point("staged")
        if registry.has(tag):
            return _already_released(registry, tag, release_dir, staging, settings)
        # The data files go into the registry's object store while this process writes the card.
        with ThreadPoolExecutor(max_workers=1) as storing:
            stored = storing.submit(registry.store_blobs, release_dir, sorted(name for d in domains for name in d.files))
            copy_validation_reports(sources, release_dir)
            provenance = {source.config: public_provenance(RunDir(source.run).provenance()) for source in sources}
            manifest = build_release(domains, release_dir, settings, card_settings, registry, provenance, drawn)
            blobs = stored.result()
        commit = registry.publish(release_dir, tag, f"Release {tag}: {', '.join(d.config for d in domains)}", stored=blobs)
        hub_commit = _push(release_dir, settings, tag)
    return ReleaseResult(tag, registry.path, "released", commit, manifest, hub_commit)


def _out_of_space(registry: Registry, tag: str) -> contextlib.AbstractContextManager[None]:
    """A full disk while a release is written is one line saying what a rerun does: before the
    version's tag nothing was published and the partial files are removed; after it, only the
    push to the Hub is left, which an unchanged rerun does."""

    def rerun() -> str:
        if registry.has(tag):
            return f"{tag} is in the local registry; the same command pushes it (an unchanged release is not written again)"
        return "nothing was published, and the partial release was removed"

    return out_of_space_is(ReleaseError, registry.path, f"release {tag} was being written", rerun)


def _already_released(registry: Registry, tag: str, release_dir: Path, staging: Path, settings: ReleaseSettings) -> ReleaseResult:
    """The result of releasing an existing version again: refused unless its data files are identical."""
    existing = registry.manifest(tag)
    if _data_checksums(existing["files"]) != _data_checksums(file_checksums(release_dir)):
        raise ReleaseError(
            f"version {tag} already exists in registry {registry.path} with different data; "
            "published versions are immutable, release under a new version (e.g. bump the patch number)"
        )
    log.info("%s is already released with the same data", tag)
    hub_commit = None
    if settings.push:
        hub_commit = _push(registry.export(tag, staging / f"existing-{tag}"), settings, tag)
    return ReleaseResult(tag, registry.path, "already_released", registry.commit_of(tag), existing, hub_commit)
