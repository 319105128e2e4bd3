"""Publish release versions to, and fetch them from, a Hugging Face Hub dataset repository.

A version is one Hub commit holding exactly the files of the release folder, and a tag
(`v1.0.0`) on that commit. Tags are immutable: pushing a version whose tag exists is refused.

The token comes from the `HF_TOKEN` environment variable (or a `hf auth login` token), read by
`huggingface_hub` itself; this module never prints, logs or stores it. The Hub address comes
from `HF_ENDPOINT` (read by `huggingface_hub` when it is imported), which is how the tests point
these functions at a loopback server.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2  # the HTTP client of huggingface_hub 2.x: its transport errors mean "Hub unreachable"
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants, get_token, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

log = logging.getLogger(__name__)

REPO_TYPE = "dataset"
# Folders of a release directory that are bookkeeping, not release content: a local registry
# is a git work tree, and huggingface_hub keeps its download metadata under `.cache/huggingface`.
SKIPPED_FOLDERS = (".git", ".cache")
# Files the Hub itself creates in every repository; they are not part of any release.
HUB_OWNED_FILES = (".gitattributes",)
_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)$")
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class HubReleaseError(ValueError):
    """A push or pull the user can fix: bad version, missing token, existing tag, unknown repo."""


def version_tag(version: str) -> str:
    """The Hub tag of a semantic version: `1.2.0` and `v1.2.0` both give `v1.2.0`."""
    match = _VERSION.match(version.strip())
    if match is None:
        raise HubReleaseError(f"version {version!r} is not semantic: use X.Y.Z or vX.Y.Z, for example v1.0.0")
    return "v{}.{}.{}".format(*match.groups())


def require_online(action: str) -> None:
    """Refuse Hub work in offline mode (`HF_HUB_OFFLINE=1`) with one line that says what to do instead."""
    if constants.HF_HUB_OFFLINE:
        raise HubReleaseError(
            f"{action}: HF_HUB_OFFLINE is set, so the Hub cannot be reached; unset HF_HUB_OFFLINE to use the Hub, "
            "or work with a local registry (`rrec pull REGISTRY_FOLDER`, `rrec release` without --push)"
        )


def list_versions(repo_id: str) -> list[str]:
    """Tags of the Hub dataset repository `repo_id`, semantic versions first in version order.

    A repository that does not exist (or that HF_TOKEN may not read) has no versions: the
    answer is an empty list, so a first push can ask before the repository is created.
    """
    _check_repo_id(repo_id)
    require_online(f"listing the versions of {repo_id}")
    api = HfApi()
    with _hub_errors(api, f"listing the versions of {repo_id}", repo_id):
        try:
            refs = api.list_repo_refs(repo_id, repo_type=REPO_TYPE)
        except RepositoryNotFoundError:
            return []
    return sorted((tag.name for tag in refs.tags), key=_version_order)


def push_release(release_dir: Path, repo_id: str, version: str, private: bool = False) -> str:
    """Publish the files of `release_dir` as version `version` of the Hub dataset `repo_id`.

    Creates the dataset repository if needed, makes ONE commit on `main` whose files are exactly
    those of `release_dir` (files of an earlier version that this one no longer has are deleted
    in the same commit), and tags it `vX.Y.Z`. `.git/` and `.cache/` folders are skipped.

    Args:
        release_dir: folder with the release layout (README.md, data/, manifest.json, ...).
        repo_id: `ORG/NAME` of the dataset repository.
        version: `X.Y.Z` or `vX.Y.Z`.
        private: create the repository private (ignored when it exists already).

    Returns:
        The commit id the version tag points to.

    Raises:
        HubReleaseError: no token, token rejected, the version exists already (versions are
            immutable), the folder is empty, or the Hub answered an error.
    """
    tag = version_tag(version)
    _check_repo_id(repo_id)
    require_online(f"pushing {tag} to {repo_id}")
    files = release_files(release_dir)
    if not files:
        raise HubReleaseError(f"release folder {release_dir} has no files to push: build the release first")
    if get_token() is None:
        raise HubReleaseError(
            "no Hugging Face token: set HF_TOKEN to a token with write access (https://huggingface.co/settings/tokens) and retry"
        )
    api = HfApi()
    with _hub_errors(api, "checking HF_TOKEN", repo_id):
        user = api.whoami(cache=True)["name"]
    log.info("pushing %s of %s as %s to %s (%d files)", tag, release_dir, user, api.endpoint, len(files))
    with _hub_errors(api, f"creating the dataset repository {repo_id}", repo_id):
        api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
        refs = api.list_repo_refs(repo_id, repo_type=REPO_TYPE)
    existing = {ref.name: ref.target_commit for ref in refs.tags}
    if tag in existing:
        raise HubReleaseError(
            f"version {tag} already exists on {repo_id} (commit {existing[tag][:12]}); versions are immutable: release a new version number"
        )
    newer = sorted((name for name in existing if _VERSION.match(name) and _version_order(name) > _version_order(tag)), key=_version_order)
    if newer:
        raise HubReleaseError(
            f"version {tag} is lower than {newer[-1]}, the newest version on {repo_id}; pushing it would move the Hub's main "
            "branch back: release a higher version number"
        )
    main_head = next((ref.target_commit for ref in refs.branches if ref.name == "main"), None)
    with _hub_errors(api, f"pushing {tag} to {repo_id}", repo_id):
        remote_files = set(api.list_repo_files(repo_id, repo_type=REPO_TYPE, revision=main_head)) if main_head else set()
        operations: list[CommitOperationAdd | CommitOperationDelete] = [
            CommitOperationAdd(path_in_repo=relative, path_or_fileobj=path) for relative, path in files.items()
        ]
        stale = sorted(remote_files - files.keys() - set(HUB_OWNED_FILES))
        operations += [CommitOperationDelete(path_in_repo=relative) for relative in stale]
        commit = api.create_commit(
            repo_id,
            operations,
            commit_message=f"Release {tag}",
            commit_description=f"{len(files)} files; {len(stale)} files of the previous version removed.",
            repo_type=REPO_TYPE,
            revision="main",
            # Fails instead of silently including someone else's concurrent push in this version.
            parent_commit=main_head,
        )
        commit_id = commit.oid
    with _hub_errors(api, f"tagging {tag} on {repo_id}", repo_id, conflict=f"version {tag} was created on {repo_id} by a concurrent push"):
        api.create_tag(repo_id, tag=tag, revision=commit_id, repo_type=REPO_TYPE, tag_message=f"Release {tag}")
    log.info("published %s of %s at commit %s", tag, repo_id, commit_id)
    return commit_id


def download_release(repo_id: str, version: str, out: Path) -> Path:
    """Download version `version` of the Hub dataset `repo_id` into the folder `out`.

    The Hub's own `.gitattributes` is not downloaded; `huggingface_hub` keeps its download
    metadata in `out/.cache/huggingface/`. Checksums are verified by the caller against the
    release manifest.

    Returns:
        `out`, now holding the release files.

    Raises:
        HubReleaseError: unknown repository, unknown version (the message lists the existing
            ones), or the Hub answered an error.
    """
    tag = version_tag(version)
    require_online(f"downloading {tag} of {repo_id}")
    available = list_versions(repo_id)
    if not available:
        raise HubReleaseError(
            f"{repo_id} has no published versions at {HfApi().endpoint}: check the repository id, "
            "and set HF_TOKEN if the repository is private"
        )
    if tag not in available:
        raise HubReleaseError(f"version {tag} does not exist on {repo_id}; available versions: {', '.join(available)}")
    api = HfApi()
    with _hub_errors(api, f"downloading {tag} of {repo_id}", repo_id):
        folder = snapshot_download(
            repo_id,
            repo_type=REPO_TYPE,
            revision=tag,
            local_dir=out,
            ignore_patterns=list(HUB_OWNED_FILES),
        )
    log.info("downloaded %s of %s into %s", tag, repo_id, folder)
    return Path(folder)


def release_files(release_dir: Path) -> dict[str, Path]:
    """Files to publish from `release_dir`, keyed by their POSIX path inside the repository."""
    if not release_dir.is_dir():
        raise HubReleaseError(f"release folder {release_dir} does not exist: build the release first")
    files = {}
    for path in sorted(release_dir.rglob("*")):
        relative = path.relative_to(release_dir)
        if path.is_file() and not any(part in SKIPPED_FOLDERS for part in relative.parts[:-1]):
            files[relative.as_posix()] = path
    return files


def _check_repo_id(repo_id: str) -> None:
    if not _REPO_ID.match(repo_id):
        raise HubReleaseError(f"repository id {repo_id!r} is not of the form ORG/NAME")


def _version_order(tag: str) -> tuple[int, tuple[int, ...], str]:
    match = _VERSION.match(tag)
    return (0, tuple(int(part) for part in match.groups()), tag) if match else (1, (), tag)


@contextmanager
def _hub_errors(api: HfApi, action: str, repo_id: str, conflict: str | None = None) -> Iterator[None]:
    """Turn Hub client errors into one actionable line (no URLs with tokens, no tracebacks)."""
    try:
        yield
    except OfflineModeIsEnabled as error:
        raise HubReleaseError(f"{action}: HF_HUB_OFFLINE is set, so the Hub cannot be reached; unset it to use the Hub") from error
    except (httpx2.TransportError, LocalEntryNotFoundError) as error:
        raise HubReleaseError(
            f"{action}: cannot reach the Hub at {api.endpoint} ({type(error).__name__}); check HF_ENDPOINT and the network"
        ) from error
    except RevisionNotFoundError as error:
        raise HubReleaseError(f"{action}: revision not found on {repo_id}") from error
    except RepositoryNotFoundError as error:
        raise HubReleaseError(f"{action}: dataset repository {repo_id} not found at {api.endpoint}, or HF_TOKEN may not read it") from error
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status == 401:
            raise HubReleaseError(f"{action}: the Hub at {api.endpoint} rejected HF_TOKEN; set a valid token with write access") from error
        if status == 403:
            raise HubReleaseError(f"{action}: HF_TOKEN has no write access to {repo_id}") from error
        if status == 409 and conflict:
            raise HubReleaseError(f"{action}: {conflict}") from error
        if status == 412:
            raise HubReleaseError(f"{action}: {repo_id} changed during the push (concurrent push); retry") from error
        server_message = error.server_message or str(error).strip().splitlines()[0]
        raise HubReleaseError(f"{action}: the Hub answered {status}: {server_message}") from error
