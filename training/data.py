"""Load released dataset versions the way a user would (never a run folder).

A dataset source is one of:

- a Hugging Face Hub dataset id (``org/name``) plus a revision (a version tag such as
  ``v1.0.0``): handed to ``datasets.load_dataset`` as is;
- a local registry, i.e. a git repository with one tag per version (what ``rrec release``
  writes): the tag's tree is extracted with ``git archive`` into a cache folder named after the
  tagged commit (immutable, so it is reused) and loaded from there;
- a plain release folder (what ``rrec pull`` writes): loaded as is; a revision, if given, must
  match the version in its ``manifest.json``.

Every loader returns a :class:`datasets.Dataset` and a :class:`DatasetSource` that says exactly
which version was read, so trained models can record where they came from.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets

from training.prompts import PromptSettings, build_completion, build_messages

log = logging.getLogger(__name__)

CACHE_ENV = "RREC_CACHE"


class DatasetSourceError(ValueError):
    """A dataset source or revision that cannot be resolved; the message says what to do."""


@dataclass(frozen=True)
class DatasetSource:
    """A resolved release: what the user asked for and what was actually read."""

    dataset: str
    config: str
    revision: str | None
    kind: str  # "hub", "registry" or "folder"
    load_path: str
    commit: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)


def cache_root() -> Path:
    """Where registry tags are materialised (``$RREC_CACHE`` or ``~/.cache/rationale-rec``)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rationale-rec") / "releases"


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if result.returncode != 0:
        raise DatasetSourceError(f"git {' '.join(args)} failed in {repo}: {result.stderr.strip()}")
    return result.stdout.strip()


def _version_key(tag: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in tag.lstrip("v").split("."))
    except ValueError:
        return (-1,)


def _is_git_repository(path: Path) -> bool:
    return (path / ".git").exists() or (path / "HEAD").is_file() and (path / "refs").is_dir()


def _materialise_tag(repo: Path, revision: str | None) -> tuple[Path, str, str]:
    """Extract a tag of a local registry into the cache; returns (folder, tag, commit)."""
    tags = [tag for tag in _git(repo, "tag", "--list").splitlines() if tag]
    if revision is None:
        if not tags:
            raise DatasetSourceError(f"the registry {repo} has no version tags yet; publish one with `rrec release`")
        revision = max(tags, key=_version_key)
        log.info("no --revision given: using the newest version %s of %s", revision, repo)
    elif revision not in tags:
        known = ", ".join(sorted(tags, key=_version_key)) or "none"
        raise DatasetSourceError(f"version {revision} is not a tag of the registry {repo} (known versions: {known})")
    commit = _git(repo, "rev-list", "-n", "1", revision)
    target = cache_root() / commit
    if not (target / "README.md").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=repo, capture_output=True)
        if archive.returncode != 0:
            raise DatasetSourceError(f"git archive {revision} failed in {repo}: {archive.stderr.decode().strip()}")
        # Extract next to the target and rename, so a crash never leaves a half release in the cache.
        staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(staging, filter="data")
        try:
            staging.rename(target)
        except OSError:
            # Another process materialised the same commit first; its copy is identical.
            shutil.rmtree(staging, ignore_errors=True)
    return target, revision, commit


def resolve_source(dataset: str, config: str, revision: str | None) -> DatasetSource:
    """Decide how to read ``dataset`` at ``revision`` (see the module docstring)."""
    path = Path(dataset).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DatasetSourceError(f"{dataset} is a file; give a release folder, a local registry or a Hub dataset id")
        if _is_git_repository(path):
            folder, tag, commit = _materialise_tag(path.resolve(), revision)
            return DatasetSource(str(path.resolve()), config, tag, "registry", str(folder), commit)
        if not (path / "README.md").exists():
            raise DatasetSourceError(
                f"{dataset} has no README.md: it is not a release folder (build one with `rrec release` or `rrec pull`)"
            )
        manifest = path / "manifest.json"
        version = json.loads(manifest.read_text(encoding="utf-8")).get("version") if manifest.exists() else None
        if revision is not None and version is not None and revision != version:
            raise DatasetSourceError(
                f"{dataset} holds version {version}, not {revision}; pull {revision} with `rrec pull` or drop --revision"
            )
        return DatasetSource(str(path.resolve()), config, revision or version, "folder", str(path.resolve()))
    if dataset.count("/") == 1 and not dataset.startswith((".", "/")):
        return DatasetSource(dataset, config, revision, "hub", dataset)
    raise DatasetSourceError(f"{dataset} is neither an existing folder nor a Hub dataset id (org/name)")


def load_resolved(source: DatasetSource, split: str, config: str | None = None) -> datasets.Dataset:
    """One split of the exact version ``source`` resolved to (``config`` defaults to the source's)."""
    config = config or source.config
    kwargs = {"revision": source.revision} if source.kind == "hub" else {}
    try:
        return datasets.load_dataset(source.load_path, config, split=split, **kwargs)
    except ValueError as exc:
        raise DatasetSourceError(f"cannot load config '{config}' split '{split}' from {source.dataset}: {exc}") from None


def load_split_with_source(dataset: str, config: str, revision: str | None, split: str) -> tuple[datasets.Dataset, DatasetSource]:
    """Like :func:`load_split`, also returning the resolved :class:`DatasetSource`."""
    source = resolve_source(dataset, config, revision)
    return load_resolved(source, split), source


def load_split(dataset: str, config: str, revision: str | None, split: str) -> datasets.Dataset:
    """One split (``train``, ``validation`` or ``test``) of a released config, rows of ``RELEASE_ROW``."""
    return load_split_with_source(dataset, config, revision, split)[0]


def catalog_config(config: str) -> str:
    """The config name of a domain's item catalog (DESIGN.md, "Release layout")."""
    return f"{config}_items"


def load_catalog(dataset: str, config: str, revision: str | None) -> datasets.Dataset:
    """The item catalog of a released config (config ``<config>_items``, split ``items``)."""
    return load_resolved(resolve_source(dataset, config, revision), "items", catalog_config(config))


@dataclass(frozen=True)
class ChatExamples:
    """Prompt-completion chat examples built from released rows, with the rows left out and why."""

    dataset: datasets.Dataset
    skipped_without_rationale: int


def to_chat_examples(rows: datasets.Dataset, settings: PromptSettings, with_rationale: bool) -> ChatExamples:
    """Conversational prompt-completion examples (``prompt``: system + user turns, ``completion``: assistant turn).

    ``with_rationale`` selects the rationale-first prompt and target (variants A/B in training);
    otherwise the item-only prompt and target (variant C in training). Rows without a rationale
    cannot be rationale-first targets: they are left out and counted, never silently.
    """
    prompts, completions, user_ids = [], [], []
    skipped = 0
    for row in rows:
        if with_rationale and not row.get("rationale"):
            skipped += 1
            continue
        prompts.append(build_messages(row, settings, infer_rationale=with_rationale))
        completions.append([{"role": "assistant", "content": build_completion(row, with_rationale)}])
        user_ids.append(row["user_id"])
    if skipped:
        log.warning("left out %d of %d rows that have no rationale", skipped, len(rows))
    examples = datasets.Dataset.from_dict({"prompt": prompts, "completion": completions, "user_id": user_ids})
    return ChatExamples(examples, skipped)
