"""A loopback Hugging Face Hub: the subset of the Hub HTTP API that the installed clients use.

Tests point `HF_ENDPOINT` at :class:`LoopbackHub` and drive the real `huggingface_hub` and
`datasets` libraries against it: whoami, repo create, README YAML validation, preupload (every
file is answered `regular`, so the commit carries the bytes and no LFS/Xet transfer happens),
NDJSON commits, tags and refs, repo info with siblings, tree listing (recursive or not, paginated
with a `Link` header like the Hub), paths-info and file resolve (HEAD and GET, with ranges).

Storage is in memory: repos -> commits -> {path: bytes}. Writes require
`Authorization: Bearer <token>` equal to the token the test set. Requests the server does not
know are logged as warnings and kept in :attr:`LoopbackHub.unknown_requests` so that a test can
fail on a protocol gap instead of passing by accident.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml
from hub_loopback_model import (
    _INITIAL_GITATTRIBUTES,
    _REPO_KINDS,
    _URL_PREFIX,
    _YAML_FRONT_MATTER,
    Commit,
    HubError,
    Repo,
    Request,
    Response,
    card_metadata,
    dataset_metadata_errors,
    file_entry,
    folder_entry,
    git_blob_oid,
    last_commit,
    tree_entries,
    utc_now,
)

log = logging.getLogger(__name__)


class LoopbackHub:
    """A threaded HTTP server on 127.0.0.1 that answers like the Hugging Face Hub.

    Use as a context manager; :attr:`endpoint` is the value for `HF_ENDPOINT`.
    `tree_page_size` is the number of entries per tree page (the Hub uses 1000); a small value
    makes the clients follow the `Link` pagination header.
    """

    def __init__(self, token: str, user: str = "tester", tree_page_size: int = 1000):
        self.token = token
        self.user = user
        self.tree_page_size = tree_page_size
        self.repos: dict[tuple[str, str], Repo] = {}
        self.unknown_requests: list[str] = []
        self.requests_served: list[str] = []
        self._lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="loopback-hub", daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> LoopbackHub:
        self._thread.start()
        log.info("loopback Hub listening on %s", self.endpoint)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def repo(self, repo_type: str, repo_id: str) -> Repo | None:
        """The stored repository, for tests that inspect what the client sent."""
        with self._lock:
            return self.repos.get((repo_type, repo_id))

    # -- request dispatch -------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        """Route one request; unknown routes are logged loudly and answered 404."""
        with self._lock:
            try:
                response = self._route(request)
            except HubError as error:
                headers = dict(error.headers)
                if error.error_code:
                    headers["X-Error-Code"] = error.error_code
                headers["X-Error-Message"] = error.message
                return Response.of_json({"error": error.message}, status=error.status, headers=headers)
        if response is None:
            description = f"{request.method} /{'/'.join(request.segments)}"
            log.warning("loopback Hub: unhandled request %s", description)
            self.unknown_requests.append(description)
            return Response.of_json({"error": f"loopback Hub does not implement {description}"}, status=404)
        return response

    def _route(self, request: Request) -> Response | None:
        segments, method = request.segments, request.method
        if segments[:1] == ["api"]:
            return self._route_api(request, segments[1:])
        # File resolve: /{prefix}{namespace}/{name}/resolve/{revision}/{path...}
        kind_prefix = segments[0] if segments and segments[0] in ("datasets", "spaces") else None
        rest = segments[1:] if kind_prefix else segments
        if len(rest) >= 5 and rest[2] == "resolve" and method in ("GET", "HEAD"):
            repo_type = _REPO_KINDS[kind_prefix] if kind_prefix else "model"
            return self._resolve_file(request, repo_type, f"{rest[0]}/{rest[1]}", rest[3], "/".join(rest[4:]))
        return None

    def _route_api(self, request: Request, segments: list[str]) -> Response | None:
        method = request.method
        if segments == ["whoami-v2"] and method == "GET":
            return self._whoami(request)
        if segments == ["repos", "create"] and method == "POST":
            return self._create_repo(request)
        if segments == ["validate-yaml"] and method == "POST":
            return self._validate_yaml(request)
        if len(segments) < 3 or segments[0] not in _REPO_KINDS:
            return None
        repo_type, repo_id, action = _REPO_KINDS[segments[0]], f"{segments[1]}/{segments[2]}", segments[3:]
        if not action and method == "GET":
            return self._repo_info(request, repo_type, repo_id, revision="main")
        if action[:1] == ["revision"] and len(action) >= 2 and method == "GET":
            return self._repo_info(request, repo_type, repo_id, revision="/".join(action[1:]))
        if action == ["refs"] and method == "GET":
            return self._refs(request, repo_type, repo_id)
        if action[:1] == ["tree"] and len(action) >= 2 and method == "GET":
            return self._tree(request, repo_type, repo_id, action[1], "/".join(action[2:]))
        if action[:1] == ["paths-info"] and len(action) == 2 and method == "POST":
            return self._paths_info(request, repo_type, repo_id, action[1])
        if action[:1] == ["preupload"] and len(action) == 2 and method == "POST":
            return self._preupload(request, repo_type, repo_id, action[1])
        if action[:1] == ["commit"] and len(action) == 2 and method == "POST":
            return self._commit(request, repo_type, repo_id, action[1])
        if action[:1] == ["tag"] and len(action) == 2 and method == "POST":
            return self._create_tag(request, repo_type, repo_id, action[1])
        return None

    # -- authentication and lookup ----------------------------------------------------------

    def _authenticated(self, request: Request) -> bool:
        return request.headers.get("Authorization", "") == f"Bearer {self.token}"

    def _require_token(self, request: Request) -> None:
        if not self._authenticated(request):
            raise HubError(401, "Invalid credentials in Authorization header")

    def _readable_repo(self, request: Request, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self._authenticated(request)):
            # The Hub does not reveal whether a private repository exists.
            raise HubError(401 if not self._authenticated(request) else 404, "Repository not found", "RepoNotFound")
        return repo

    def _commit_at(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _branch_for_write(self, request: Request, repo_type: str, repo_id: str, revision: str) -> tuple[Repo, str]:
        self._require_token(request)
        repo = self._readable_repo(request, repo_type, repo_id)
        if request.flag("create_pr"):
            raise HubError(400, "loopback Hub does not implement pull requests")
        branch = revision.removeprefix("refs/heads/")
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision} is not a branch", "RevisionNotFound")
        return repo, branch

    # -- account and repositories -----------------------------------------------------------

    def _whoami(self, request: Request) -> Response:
        self._require_token(request)
        return Response.of_json(
            {
                "type": "user",
                "id": "0" * 24,
                "name": self.user,
                "fullname": "Loopback Tester",
                "isPro": False,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "loopback", "role": "write"}},
            }
        )

    def _create_repo(self, request: Request) -> Response:
        self._require_token(request)
        payload = request.json()
        repo_type = payload.get("type") or "model"
        namespace = payload.get("organization") or self.user
        repo_id = f"{namespace}/{payload['name']}"
        url = f"{self.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            return Response.of_json({"error": f"You already created this {repo_type} repo", "url": url}, status=409)
        repo = Repo(
            repo_type=repo_type,
            repo_id=repo_id,
            private=payload.get("visibility", "public") != "public" or bool(payload.get("private")),
            created_at=utc_now(),
        )
        # Like the Hub, a new repository starts with one commit holding `.gitattributes`.
        repo.add_commit("main", "initial commit", {".gitattributes": _INITIAL_GITATTRIBUTES})
        self.repos[(repo_type, repo_id)] = repo
        return Response.of_json({"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def _validate_yaml(self, request: Request) -> Response:
        payload = request.json()
        match = _YAML_FRONT_MATTER.match(payload.get("content", ""))
        if match is None:
            return Response.of_json({"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]})
        try:
            metadata = yaml.safe_load(match.group(1))
        except yaml.YAMLError as error:
            return Response.of_json({"errors": [{"message": f"Invalid YAML: {error}"}], "warnings": []}, status=400)
        errors = dataset_metadata_errors(metadata) if payload.get("repoType") == "dataset" else []
        if errors:
            return Response.of_json({"errors": [{"message": message} for message in errors], "warnings": []}, status=400)
        return Response.of_json({"errors": [], "warnings": []})

    def _repo_info(self, request: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        repo = self._readable_repo(request, repo_type, repo_id)
        commit = self._commit_at(repo, revision)
        with_blobs = request.flag("blobs")
        siblings = []
        for path, content in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if with_blobs:
                sibling.update(size=len(content), blobId=git_blob_oid(content))
            siblings.append(sibling)
        card_data = card_metadata(commit.files.get("README.md"))
        info = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.oid,
            "createdAt": repo.created_at,
            "lastModified": commit.date,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(len(content) for content in commit.files.values()),
        }
        if card_data is not None:
            info["cardData"] = card_data
        return Response.of_json(info)

    def _refs(self, request: Request, repo_type: str, repo_id: str) -> Response:
        repo = self._readable_repo(request, repo_type, repo_id)
        refs: dict[str, Any] = {
            "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": oid} for n, oid in sorted(repo.branches.items())],
            "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": oid} for n, oid in sorted(repo.tags.items())],
            "converts": [],
        }
        if request.flag("include_prs"):
            refs["pullRequests"] = []
        return Response.of_json(refs)

    def _create_tag(self, request: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        self._require_token(request)
        repo = self._readable_repo(request, repo_type, repo_id)
        commit = self._commit_at(repo, revision)
        tag = request.json().get("tag", "")
        if not tag or tag in repo.branches:
            raise HubError(400, f"Invalid tag name: {tag!r}")
        if tag in repo.tags:
            raise HubError(409, f"Tag {tag} already exists")
        repo.tags[tag] = commit.oid
        return Response.of_json({"name": tag, "ref": f"refs/tags/{tag}", "targetCommit": commit.oid})

    # -- listing ----------------------------------------------------------------------------

    def _tree(self, request: Request, repo_type: str, repo_id: str, revision: str, folder: str) -> Response:
        repo = self._readable_repo(request, repo_type, repo_id)
        commit = self._commit_at(repo, revision)
        folder = folder.strip("/")
        if folder and folder in commit.files:
            raise HubError(400, f"{folder} is a file, not a directory")
        entries = tree_entries(commit.files, folder, recursive=request.flag("recursive"))
        if folder and not entries:
            raise HubError(404, f"{folder} does not exist on {revision}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        start = int(request.query.get("cursor", ["0"])[-1])
        page = entries[start : start + self.tree_page_size]
        headers = {}
        if start + self.tree_page_size < len(entries):
            path = "/" + "/".join(quote(s, safe="") for s in request.segments)
            flags = f"recursive={str(request.flag('recursive')).lower()}&expand={str(request.flag('expand')).lower()}"
            headers["Link"] = f'<{self.endpoint}{path}?{flags}&cursor={start + self.tree_page_size}>; rel="next"'
        if request.flag("expand"):
            page = [{**entry, "lastCommit": last_commit(commit)} for entry in page]
        return Response.of_json(page, headers=headers)

    def _paths_info(self, request: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        repo = self._readable_repo(request, repo_type, repo_id)
        commit = self._commit_at(repo, revision)
        form = parse_qs(request.body.decode(), keep_blank_values=True)
        if "application/json" in request.headers.get("Content-Type", ""):
            form = {key: value if isinstance(value, list) else [value] for key, value in request.json().items()}
        expand = form.get("expand", ["false"])[-1] in ("1", "true", "True", True)
        infos = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in commit.files:
                infos.append(file_entry(path, commit.files[path]))
            elif any(name.startswith(path + "/") for name in commit.files):
                infos.append(folder_entry(path, commit.files))
            else:
                continue
            if expand:
                infos[-1]["lastCommit"] = last_commit(commit)
        return Response.of_json(infos)

    # -- uploads ----------------------------------------------------------------------------

    def _preupload(self, request: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        repo, branch = self._branch_for_write(request, repo_type, repo_id, revision)
        head = repo.commits[repo.branches[branch]]
        files = []
        for item in request.json().get("files", []):
            existing = head.files.get(item["path"])
            files.append(
                {
                    "path": item["path"],
                    # Everything travels inside the commit payload: no LFS or Xet storage here.
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_oid(existing) if existing is not None else None,
                }
            )
        return Response.of_json({"files": files, "commitOid": head.oid})

    def _commit(self, request: Request, repo_type: str, repo_id: str, revision: str) -> Response:
        repo, branch = self._branch_for_write(request, repo_type, repo_id, revision)
        if "application/x-ndjson" not in request.headers.get("Content-Type", ""):
            raise HubError(400, "commit payload must be application/x-ndjson")
        lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "commit payload must start with a header line")
        header = lines[0]["value"]
        head = repo.commits[repo.branches[branch]]
        parent = header.get("parentCommit")
        if parent and not head.oid.startswith(parent):
            raise HubError(412, f"A commit has happened since. Parent commit {parent} is not the head of {branch}")
        files = dict(head.files)
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"unsupported file encoding {value.get('encoding')!r}")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
                del files[value["path"]]
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {path: content for path, content in files.items() if not path.startswith(prefix)}
            else:
                # `lfsFile` and copies would need LFS storage; preupload never asks for it.
                log.warning("loopback Hub: unsupported commit operation %r", key)
                self.unknown_requests.append(f"commit operation {key}")
                raise HubError(400, f"loopback Hub does not implement commit operation {key!r}")
        title = header.get("summary") or "update"
        commit = repo.add_commit(branch, title, files)
        url = f"{self.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}/commit/{commit.oid}"
        return Response.of_json({"success": True, "commitOid": commit.oid, "commitUrl": url, "pullRequestUrl": None})

    # -- downloads --------------------------------------------------------------------------

    def _resolve_file(self, request: Request, repo_type: str, repo_id: str, revision: str, path: str) -> Response:
        repo = self._readable_repo(request, repo_type, repo_id)
        commit = self._commit_at(repo, revision)
        content = commit.files.get(path)
        if content is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{git_blob_oid(content)}"',
            "Accept-Ranges": "bytes",
            "Last-Modified": formatdate(usegmt=True),
        }
        status, body = 200, content
        byte_range = request.headers.get("Range")
        if byte_range:
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", byte_range.strip())
            if match is None:
                raise HubError(416, f"Unsupported range {byte_range}")
            first, last = match.groups()
            if first == "":
                start, end = max(len(content) - int(last), 0), len(content) - 1
            else:
                start, end = int(first), min(int(last) if last else len(content) - 1, len(content) - 1)
            if start >= len(content) and len(content) > 0:
                raise HubError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{len(content)}"})
            status, body = 206, content[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
        return Response(status=status, body=body, content_type="application/octet-stream", headers=headers)


def _handler_class(hub: LoopbackHub) -> type[BaseHTTPRequestHandler]:
    class HubRequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._serve()

        def do_HEAD(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def do_PUT(self) -> None:
            self._serve()

        def do_DELETE(self) -> None:
            self._serve()

        def _serve(self) -> None:
            url = urlsplit(self.path)
            # Split before unquoting: revisions such as `refs%2Fconvert%2Fparquet` are one segment.
            segments = [unquote(segment) for segment in url.path.strip("/").split("/") if segment]
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = self._read_chunked()
            else:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            request = Request(self.command, segments, parse_qs(url.query), self.headers, body)
            response = hub.handle(request)
            hub.requests_served.append(f"{self.command} {url.path} -> {response.status}")
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)

        def _read_chunked(self) -> bytes:
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()

        def log_message(self, format: str, *args: Any) -> None:
            # Request lines only (never headers, which carry the token), at debug level.
            log.debug("loopback Hub: " + format, *args)

    return HubRequestHandler
