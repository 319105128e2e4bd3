"""The stage contract shared by every pipeline stage.

A run folder holds one domain. A stage writes its tables into a temporary folder inside the
run folder and only renames them into place once every output is complete; its entry in
``manifest.json`` is removed before the renames and written (atomically) after them, so a
stage without a manifest entry is incomplete and is rerun, and a later stage never reads a
half table. A rerun skips a stage whose fingerprint (content hashes of its inputs, the
config values that matter, the code version) equals the recorded one.

A stage is a subclass of :class:`Stage` that declares its name, the upstream stages whose
outputs it consumes and its settings model, and implements :meth:`Stage.run` (the work, writing
into the temporary area). :meth:`Stage.execute` owns everything else, once for every stage:
the fingerprint (settings, code version, external inputs and the recorded output hashes of the
upstream stages), the skip, the checks made before a cluster is used, the lock, the temporary
folder, the manifest record and the provenance chain::

    class FilterStage(Stage):
        name = "filter"
        upstream = ("sequences", "annotate")
        settings_type = FilterSettings

        def run(self, ctx: StageContext) -> None:
            ...  # map a pure partition function over the cluster, write ctx.out.table_dir(...)
            ctx.out.record(rows_in=n, rows_out={"filtered": k}, rejects_by_reason=reasons)

    result = FilterStage().execute(run_path, settings, client, force=False)

Each entry names the output hashes it consumed (``upstream``); when an upstream stage is rerun
and its outputs change, every stage after it is *stale* (:meth:`RunDir.stale_stages`), and a
stale or missing stage blocks a card or a release (:meth:`RunDir.require_fresh`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import __version__
from core.hashing import code_version, fingerprint_of, hash_path
from core.reasons import check_reasons

MANIFEST = "manifest.json"
STAGE_ORDER = ("ingest", "sequences", "annotate", "filter", "judge", "validate")
"""The per-domain stages in chain order; staleness and "rerun this first" follow it."""
TMP_PREFIX = ".tmp-"


class StageError(RuntimeError):
    """A stage cannot run; the message says what to do (e.g. which stage to run first)."""


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
        """The folder for output table ``table``; it replaces ``run/table`` on commit.

        In a resumed stage (same fingerprint as a killed attempt) the folder keeps the part files
        that attempt completed: :meth:`done_parts` lists them so their partitions are skipped.
        """
        return self.output_path(table, folder=True)

    def output_path(self, name: str, folder: bool = False) -> Path:
        """A path for output ``name`` (a table folder or a single file) inside the temp area."""
        if name in self.outputs:
            raise StageError(f"stage {self.name} declared output {name} twice")
        self.outputs.append(name)
        path = self.tmp_dir / name
        if folder:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def done_parts(self, table: str) -> set[str]:
        """Names of the complete part files already in output ``table`` (resumed work)."""
        folder = self.tmp_dir / table
        return {p.name for p in folder.glob("*.parquet")} if folder.is_dir() else set()

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

    # -- the provenance chain --------------------------------------------------------------
    def stale_stages(self) -> dict[str, str]:
        """Stages whose recorded upstream outputs differ from what is on record now, with why.

        A stage is stale when a stage it consumed was rerun with other outputs, removed, or is
        itself stale: every stage after a changed one is stale too.
        """
        stages = self.manifest()["stages"]
        stale: dict[str, str] = {}
        for name in sorted(stages, key=_chain_position):
            for upstream, consumed in _consumed(stages[name]).items():
                current = stages.get(upstream)
                if upstream in stale:
                    stale[name] = f"it consumed stage '{upstream}', which is stale"
                elif current is None:
                    stale[name] = f"it consumed stage '{upstream}', which is no longer complete"
                elif changed := sorted(o for o, digest in consumed.items() if current["outputs"].get(o) != digest):
                    stale[name] = f"stage '{upstream}' was rerun since and its output {', '.join(changed)} changed"
                else:
                    continue
                break
        return stale

    def require_fresh(self, required: Iterable[str], action: str) -> None:
        """Raise :class:`StageError` unless every ``required`` stage is complete and not stale.

        The message names the first stage (in chain order) to rerun, so the user knows where
        to start; ``action`` says what was refused (``"release"``, ``"card"``).
        """
        stale = self.stale_stages()
        stages = self.manifest()["stages"]
        problems = {name: "it has not completed" for name in required if name not in stages}
        problems.update(stale)
        if problems:
            first = min(problems, key=_chain_position)
            others = ", ".join(sorted((n for n in problems if n != first), key=_chain_position))
            raise StageError(
                f"cannot {action} {self.path}: stage '{first}' must be rerun first ({problems[first]}): "
                f"`rrec {first} --run {self.path}` or `rrec run`" + (f"; after it also: {others}" if others else "")
            )

    def provenance(self) -> dict[str, dict[str, Any]]:
        """What produced each stage's outputs: fingerprint, code, settings, inputs and outputs.

        External inputs (raw files with their hashes, a synthetic generator's settings) sit in
        the first stage's entry; every later stage names the upstream outputs it consumed.
        """
        keys = ("fingerprint", "code_version", "config", "inputs", "upstream", "outputs", "finished_at", "source")
        return {name: {k: entry[k] for k in keys if k in entry} for name, entry in self.manifest()["stages"].items()}

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

    def clean_temporaries(self, keep: Path | None = None) -> None:
        """Remove what killed runs left behind (temp folders never hold committed data).

        ``keep`` is the resumable temp folder of the stage about to run, kept for its parts.
        """
        if self.path.exists():
            for leftover in self.path.glob(f"{TMP_PREFIX}*"):
                if leftover == keep:
                    continue
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)

    @contextlib.contextmanager
    def stage(
        self,
        name: str,
        fingerprint: str,
        config: dict[str, Any],
        inputs: dict[str, str] | None = None,
        upstream: dict[str, dict[str, str]] | None = None,
        resumable: bool = False,
    ) -> Iterator[StageOutput]:
        """Run a stage atomically: outputs go to a temp folder and are renamed in on success.

        ``upstream`` maps each consumed stage to the output hashes read (the provenance chain).
        With ``resumable`` the temp folder is named by the fingerprint and survives a kill or an
        interrupt (not an error), so the next attempt with the same fingerprint finds the parts
        already written.

        One function on purpose: the commit protocol (lock, temp folder, reason check, hashes, manifest entry removed, renames, entry written) is safe only in this order, which reads best in one place.
        """
        with _out_of_space_is_a_stage_error(self.path, name), self._lock():
            resume_dir = self.path / f"{TMP_PREFIX}{name}-resume-{fingerprint[:16]}" if resumable else None
            self.clean_temporaries(keep=resume_dir)
            tmp_dir = resume_dir or self.path / f"{TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
            tmp_dir.mkdir(parents=True, exist_ok=True)
            out = StageOutput(run=self, name=name, tmp_dir=tmp_dir)
            started = time.time()
            try:
                yield out
                check_reasons(name, out.rejects_by_reason)
            except Exception:
                shutil.rmtree(tmp_dir, ignore_errors=True)
                raise
            except BaseException:  # Ctrl-C: a resumable stage keeps its complete parts, like after a kill
                if not resumable:
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
                "upstream": upstream or {},
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


@contextlib.contextmanager
def out_of_space_is(error: type[Exception], folder: Path, writing: str, then: str | Callable[[], str]) -> Iterator[None]:
    """A full disk (here or on a Dask worker writing into ``folder``) becomes one clear line:
    ``error`` naming the folder, what was being written and where a rerun starts (``then``, or
    what it returns when the disk filled)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        rerun = then() if callable(then) else then
        raise error(f"no space left on the device of {folder} while {writing}; free space (`df -h {folder}`) and rerun: {rerun}") from None


def _out_of_space_is_a_stage_error(folder: Path, stage: str) -> contextlib.AbstractContextManager[None]:
    return out_of_space_is(StageError, folder, f"stage '{stage}' was writing", "completed stages are kept, this one starts again")


def _chain_position(stage: str) -> int:
    return STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER)


def _consumed(entry: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The upstream outputs an entry consumed; entries written before ``upstream`` was
    recorded name them in ``inputs`` as ``stage/output``."""
    if "upstream" in entry:
        return entry["upstream"]
    consumed: dict[str, dict[str, str]] = {}
    for key, digest in entry.get("inputs", {}).items():
        stage, _, output = key.partition("/")
        if output and stage in STAGE_ORDER:
            consumed.setdefault(stage, {})[output] = digest
    return consumed
