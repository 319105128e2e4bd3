"""The loopback Hub's storage and wire shapes: repos, commits, requests, responses, tree entries.

Used by :mod:`hub_loopback`, which routes the Hub HTTP API over them.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import yaml

_REPO_KINDS = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_INITIAL_GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"
_YAML_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.DOTALL)


def git_blob_oid(content: bytes) -> str:
    """The git object id of a file, as the Hub reports it for regular (non-LFS) files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass(frozen=True)
class Commit:
    """One commit: a full snapshot of the repository's files."""

    oid: str
    parent: str | None
    title: str
    date: str
    files: dict[str, bytes]


@dataclass
class Repo:
    """A repository: its commits, branches and tags."""

    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        """The commit a branch, tag, `refs/...` name or full commit id points to."""
        name = revision.removeprefix("refs/heads/").removeprefix("refs/tags/")
        oid = self.branches.get(name) or self.tags.get(name)
        if oid is None and revision in self.commits:
            oid = revision
        return self.commits.get(oid) if oid else None

    def add_commit(self, branch: str, title: str, files: dict[str, bytes]) -> Commit:
        """Record a new commit of `files` on top of `branch` and move the branch to it."""
        parent = self.branches.get(branch)
        digest = hashlib.sha1()
        digest.update(f"{parent}\n{title}\n{len(self.commits)}\n".encode())
        for path in sorted(files):
            digest.update(f"{path}\0{git_blob_oid(files[path])}\n".encode())
        commit = Commit(oid=digest.hexdigest(), parent=parent, title=title, date=utc_now(), files=dict(files))
        self.commits[commit.oid] = commit
        self.branches[branch] = commit.oid
        return commit


class HubError(Exception):
    """An error answered the way the Hub answers it: status, `X-Error-Code` and a JSON message."""

    def __init__(self, status: int, message: str, error_code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.headers = headers or {}


@dataclass
class Request:
    """What a route handler needs from one HTTP request."""

    method: str
    segments: list[str]
    query: dict[str, list[str]]
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"{}")

    def flag(self, name: str) -> bool:
        return self.query.get(name, ["false"])[-1].lower() in ("1", "true")


@dataclass
class Response:
    """What a route handler answers."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_json(cls, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return cls(status=status, body=json.dumps(payload).encode(), headers=headers or {})


def tree_entries(files: dict[str, bytes], folder: str, recursive: bool) -> list[dict[str, Any]]:
    """Tree entries under `folder`, folders before their contents, sorted by path like the Hub."""
    prefix = f"{folder}/" if folder else ""
    entries: dict[str, dict[str, Any]] = {}
    for path, content in files.items():
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix) :].split("/")
        depth = len(parts) if recursive else 1
        for index in range(min(depth, len(parts) - 1)):
            folder_path = prefix + "/".join(parts[: index + 1])
            entries.setdefault(folder_path, folder_entry(folder_path, files))
        if recursive or len(parts) == 1:
            entries[path] = file_entry(path, content)
    return [entries[path] for path in sorted(entries)]


def file_entry(path: str, content: bytes) -> dict[str, Any]:
    return {"type": "file", "oid": git_blob_oid(content), "size": len(content), "path": path}


def folder_entry(path: str, files: dict[str, bytes]) -> dict[str, Any]:
    digest = hashlib.sha1()
    for name in sorted(name for name in files if name.startswith(path + "/")):
        digest.update(f"{name}\0{git_blob_oid(files[name])}\n".encode())
    return {"type": "directory", "oid": digest.hexdigest(), "size": 0, "path": path}


def last_commit(commit: Commit) -> dict[str, str]:
    return {"id": commit.oid, "title": commit.title, "date": commit.date}


def card_metadata(readme: bytes | None) -> dict[str, Any] | None:
    if readme is None:
        return None
    match = _YAML_FRONT_MATTER.match(readme.decode("utf-8", errors="replace"))
    if match is None:
        return None
    metadata = yaml.safe_load(match.group(1))
    return metadata if isinstance(metadata, dict) else None


def dataset_metadata_errors(metadata: Any) -> list[str]:
    """The checks the Hub applies to the `configs` of a dataset card that the loaders depend on."""
    if metadata is None:
        return []
    if not isinstance(metadata, dict):
        return ["Metadata must be a YAML mapping"]
    errors = []
    configs = metadata.get("configs", [])
    if not isinstance(configs, list):
        return ['"configs" must be a list']
    for index, config in enumerate(configs):
        if not isinstance(config, dict) or not isinstance(config.get("config_name"), str):
            errors.append(f'"configs[{index}].config_name" is required and must be a string')
            continue
        data_files = config.get("data_files")
        if isinstance(data_files, list):
            for entry in data_files:
                if isinstance(entry, dict) and not ({"split", "path"} <= entry.keys()):
                    errors.append(f'"configs[{index}].data_files" entries need "split" and "path"')
    return errors
