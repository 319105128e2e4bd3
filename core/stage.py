"""The stage contract shared by every pipeline stage.

A run folder holds one domain. A stage writes its tables into a temporary folder inside the
run folder and only renames them into place once every output is complete; its entry in
``manifest.json`` is removed before the renames and written (atomically) after them, so a
stage without a manifest entry is incomplete and is rerun, and a later stage never reads a
half table. A rerun skips a stage whose fingerprint (content hashes of its inputs, the
config values that matter, the code version) equals the recorded one.

Typical use inside a stage module::

    run = RunDir(run_path)
    fp = run.fingerprint("sequences", config=settings.model_dump(), inputs=run.upstream_hashes("ingest"))
    if not force and run.is_current("sequences", fp):
        return run.entry("sequences")
    with run.stage("sequences", fp, config=settings.model_dump()) as out:
        write_parquet_parts(out.table_dir("sequences"), ...)
        out.record(rows_in=n_in, rows_out={"sequences": n_out}, rejects_by_reason={...})
    return run.entry("sequences")
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import xxhash

from core import __version__

MANIFEST = "manifest.json"
# Fingerprints only need to tell contents apart, not resist forgery (releases carry sha256):
# xxh3 hashes at memory speed, where blake2b cost ~9 s on a 5 GB input at every ingest.
HASH_ALGORITHM = "xxh3-128"
TMP_PREFIX = ".tmp-"
_HASH_CHUNK = 8 * 1024 * 1024


class StageError(RuntimeError):
    """A stage cannot run; the message says what to do (e.g. which stage to run first)."""


def code_version() -> str:
    """Package version plus the git commit of the checkout, when there is one."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+g{sha}" if sha else __version__


def hash_stream(handle: BinaryIO) -> str:
    """Content hash (:data:`HASH_ALGORITHM`) of everything left in a binary file object."""
    digest = xxhash.xxh3_128()
    while chunk := handle.read(_HASH_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def hash_file(path: Path) -> str:
    """Content hash of one file, streamed in 8 MiB chunks."""
    with open(path, "rb") as handle:
        return hash_stream(handle)


def hash_path(path: Path) -> str:
    """Content hash of a file, or of a folder (relative names and contents of every file)."""
    path = Path(path)
    if path.is_file():
        return hash_file(path)
    if not path.is_dir():
        raise StageError(f"cannot fingerprint {path}: no such file or folder")
    digest = xxhash.xxh3_128()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(hash_file(file).encode())
    return digest.hexdigest()


def hash_paths(paths: Iterable[Path]) -> dict[str, str]:
    return {str(p): hash_path(Path(p)) for p in paths}


def fingerprint_of(payload: dict[str, Any]) -> str:
    canonical = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@contextlib.contextmanager
def exclusive_lock(lock_file: Path, busy: Exception) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``lock_file``; raise ``busy`` at once if another process has it."""
    with open(lock_file, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex}")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@dataclass
class StageOutput:
    """Where a running stage writes; filled in by the stage, committed by :meth:`RunDir.stage`."""

    run: RunDir
    name: str
    tmp_dir: Path
    outputs: list[str] = field(default_factory=list)
    rows_in: int | None = None
    rows_out: dict[str, int] = field(default_factory=dict)
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def table_dir(self, table: str) -> Path:
        """A fresh folder for output table ``table``; it replaces ``run/table`` on commit."""
        return self.output_path(table, folder=True)

    def output_path(self, name: str, folder: bool = False) -> Path:
        """A path for output ``name`` (a table folder or a single file) inside the temp area."""
        if name in self.outputs:
            raise StageError(f"stage {self.name} declared output {name} twice")
        self.outputs.append(name)
        path = self.tmp_dir / name
        if folder:
            path.mkdir(parents=True)
        return path

    def record(
        self,
        rows_in: int | None = None,
        rows_out: dict[str, int] | None = None,
        rejects_by_reason: dict[str, int] | None = None,
        **extra: Any,
    ) -> None:
        if rows_in is not None:
            self.rows_in = int(rows_in)
        if rows_out:
            self.rows_out.update({k: int(v) for k, v in rows_out.items()})
        if rejects_by_reason:
            for reason, count in rejects_by_reason.items():
                self.rejects_by_reason[reason] = self.rejects_by_reason.get(reason, 0) + int(count)
        self.extra.update(extra)


class RunDir:
    """A run folder: one domain's tables plus ``manifest.json``."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    # -- manifest -------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"stages": {}}
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def entry(self, stage: str) -> dict[str, Any] | None:
        return self.manifest()["stages"].get(stage)

    def require(self, stage: str, hint: str | None = None) -> dict[str, Any]:
        """The completed entry of an upstream stage, or an error that says how to produce it."""
        entry = self.entry(stage)
        if entry is None:
            how = hint or f"rrec {stage} --run {self.path}"
            raise StageError(f"stage '{stage}' has not completed in run folder {self.path}; run `{how}` first")
        return entry

    def upstream_hashes(self, *stages: str) -> dict[str, str]:
        """Output content hashes of completed upstream stages, for a downstream fingerprint."""
        hashes: dict[str, str] = {}
        for stage in stages:
            for name, digest in self.require(stage)["outputs"].items():
                hashes[f"{stage}/{name}"] = digest
        return hashes

    def fingerprint(self, stage: str, config: dict[str, Any], inputs: dict[str, str]) -> str:
        return fingerprint_of({"stage": stage, "code": __version__, "config": config, "inputs": inputs})

    def is_current(self, stage: str, fingerprint: str) -> bool:
        entry = self.entry(stage)
        if entry is None or entry.get("fingerprint") != fingerprint:
            return False
        return all((self.path / name).exists() for name in entry.get("outputs", {}))

    def table(self, name: str) -> Path:
        return self.path / name

    def _update_manifest(self, stage: str, entry: dict[str, Any] | None) -> None:
        manifest = self.manifest()
        if entry is None:
            manifest["stages"].pop(stage, None)
        else:
            manifest["stages"][stage] = entry
        _atomic_write_json(self.manifest_path, manifest)

    # -- running a stage ------------------------------------------------------------------
    def _lock(self) -> contextlib.AbstractContextManager[None]:
        self.path.mkdir(parents=True, exist_ok=True)
        return exclusive_lock(self.path / ".lock", StageError(f"another rrec process is writing to {self.path}; wait for it to finish"))

    def clean_temporaries(self) -> None:
        """Remove what killed runs left behind (temp folders never hold committed data)."""
        if self.path.exists():
            for leftover in self.path.glob(f"{TMP_PREFIX}*"):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)

    @contextlib.contextmanager
    def stage(self, name: str, fingerprint: str, config: dict[str, Any], inputs: dict[str, str] | None = None) -> Iterator[StageOutput]:
        """Run a stage atomically: outputs go to a temp folder and are renamed in on success."""
        with self._lock():
            self.clean_temporaries()
            tmp_dir = self.path / f"{TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
            tmp_dir.mkdir(parents=True)
            out = StageOutput(run=self, name=name, tmp_dir=tmp_dir)
            started = time.time()
            try:
                yield out
            except BaseException:
                shutil.rmtree(tmp_dir, ignore_errors=True)
                raise
            missing = [o for o in out.outputs if not (tmp_dir / o).exists()]
            if missing:
                shutil.rmtree(tmp_dir, ignore_errors=True)
                raise StageError(f"stage {name} declared outputs it did not write: {missing}")
            output_hashes = {o: hash_path(tmp_dir / o) for o in out.outputs}
            # From here on the old entry no longer describes what is on disk.
            self._update_manifest(name, None)
            for output in out.outputs:
                dest = self.path / output
                if dest.exists():
                    trash = self.path / f"{TMP_PREFIX}old-{output}-{uuid.uuid4().hex[:8]}"
                    os.replace(dest, trash)
                os.replace(tmp_dir / output, dest)
            entry = {
                "fingerprint": fingerprint,
                "code_version": code_version(),
                "config": config,
                "inputs": inputs or {},
                "outputs": output_hashes,
                "rows_in": out.rows_in,
                "rows_out": out.rows_out,
                "rejects_by_reason": dict(sorted(out.rejects_by_reason.items())),
                "wall_time_s": round(time.time() - started, 3),
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **out.extra,
            }
            self._update_manifest(name, entry)
            self.clean_temporaries()
