"""The SQLite answer cache that makes annotation resumable and reruns free.

One row per request hash (a hash of model, prompt version, messages and generation parameters,
see :func:`request_hash`). Every answer is committed the moment it arrives, in WAL mode, so a
run killed with SIGKILL at any point keeps every answer it received and a rerun sends none of
those requests again. WAL lets Dask workers read the cache while the process that sends the
requests writes it; ``INSERT OR IGNORE`` plus a busy timeout makes concurrent writers from
several processes safe (the first answer for a hash wins, later ones are identical requests).
The same file records submitted Batch API jobs so a rerun resumes them instead of resubmitting.

Out of space: an answer is paid for once it arrives, so it must reach the cache even when the
disk fills. The process that sends requests opens the cache with ``reserve_space``, which keeps
a spare file of :data:`SPARE_BYTES` beside it. When a write fails for lack of space the spare
is deleted and the write retried, and :attr:`AnswerCache.out_of_space` tells the sender to start
no further request; the answers of requests already in flight still fit in the freed space.
The sender then stops with one line naming the folder (:class:`CacheFullError`), and a rerun
after freeing space pays for no answer twice.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.stage import StageError

CACHE_FILE = "annotation_cache.sqlite"
_LOOKUP_CHUNK = 500  # SQLite's bound-parameter limit is 999 on old builds
_BUSY_TIMEOUT_S = 60.0
SPARE_SUFFIX = ".spare"
SPARE_BYTES = 4 * 1024 * 1024
"""Room for the answers in flight when the disk fills (a few hundred answers of 20k characters)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    request_hash TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    content TEXT,
    refusal TEXT,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    batch_key TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    request_count INTEGER NOT NULL,
    created_at REAL NOT NULL
);
"""


def request_hash(model: str, prompt_version: str, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
    """The cache key of one request: sha256 over its length-prefixed parts.

    The parts are the canonical JSON of (model, prompt version, generation parameters), then
    each message's role and content; length prefixes make the encoding unambiguous without
    serialising the (long) messages a second time.
    """
    header = json.dumps({"model": model, "prompt_version": prompt_version, "params": params}, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256()
    for part in (header, *(f"{m['role']}\x00{m['content']}" for m in messages)):
        data = part.encode()
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


@dataclass(frozen=True)
class CachedAnswer:
    """A model's answer to one request, with its token usage and estimated cost."""

    content: str | None
    refusal: str | None
    input_tokens: int
    output_tokens: int
    cost_usd: float


@dataclass(frozen=True)
class BatchRecord:
    batch_id: str
    input_file_id: str
    request_count: int


class CacheFullError(StageError):
    """No space is left to store answers; the message names the folder and what to do."""


def _is_out_of_space(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower()


def out_of_space_message(folder: Path) -> str:
    """The one line a stage stops with when ``folder``'s device is full."""
    return (
        f"no space left on the device of {folder}: free some space and rerun the same command "
        "(every answer received so far is in the cache and is not requested again)"
    )


@contextlib.contextmanager
def stop_when_full(folder: Path) -> Iterator[None]:
    """Turn a write that fails for lack of space into the one-line :class:`CacheFullError`."""
    try:
        yield
    except OSError as exc:
        if not _is_out_of_space(exc):
            raise
        raise CacheFullError(out_of_space_message(folder)) from None


class AnswerCache:
    """Answers by request hash in ``RUN/annotation_cache.sqlite`` (safe across processes).

    ``reserve_space``: keep the spare file that lets answers in flight be stored once the disk
    is full (the sending process only; readers on Dask workers leave it alone).
    """

    def __init__(self, path: Path | str, reserve_space: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.out_of_space = False
        self._spare = self.path.with_name(self.path.name + SPARE_SUFFIX) if reserve_space else None
        if self._spare is not None:
            _make_spare(self._spare)
        # isolation_level=None: autocommit, every put is durable before the next request goes.
        self._db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        # Switching to WAL needs a moment of exclusive access, and SQLite reports a busy
        # database at once instead of waiting when another process holds it (a Dask worker
        # opening the cache while the driver commits answers): retry until the timeout.
        deadline = time.monotonic() + _BUSY_TIMEOUT_S
        while True:
            try:
                if self._db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    self._db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        # NORMAL is crash-safe for process kills in WAL mode (only power loss can drop a commit).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_many(self, hashes: Iterable[str]) -> dict[str, CachedAnswer]:
        """The cached answers among ``hashes`` (missing hashes are simply absent)."""
        wanted = list(dict.fromkeys(hashes))
        found: dict[str, CachedAnswer] = {}
        for start in range(0, len(wanted), _LOOKUP_CHUNK):
            chunk = wanted[start : start + _LOOKUP_CHUNK]
            placeholders = ",".join("?" * len(chunk))
            for row in self._db.execute(
                "SELECT request_hash, content, refusal, input_tokens, output_tokens, cost_usd "
                f"FROM answers WHERE request_hash IN ({placeholders})",
                chunk,
            ):
                found[row[0]] = CachedAnswer(*row[1:])
        return found

    def put(self, request_hash_: str, model: str, prompt_version: str, answer: CachedAnswer) -> None:
        """Store one answer (committed at once; an existing answer for the hash is kept).

        On a full disk the spare file is given up and the write retried once; if that fails
        too, :class:`CacheFullError` (the answer could not be kept).
        """
        try:
            self._insert(request_hash_, model, prompt_version, answer)
        except (sqlite3.OperationalError, OSError) as exc:
            if not _is_out_of_space(exc):
                raise
            self.out_of_space = True
            if self._spare is None or not self._spare.exists():
                raise CacheFullError(out_of_space_message(self.path.parent)) from None
            self._spare.unlink()
            try:
                self._insert(request_hash_, model, prompt_version, answer)
            except (sqlite3.OperationalError, OSError) as again:
                if not _is_out_of_space(again):
                    raise
                raise CacheFullError(out_of_space_message(self.path.parent)) from None

    def _insert(self, request_hash_: str, model: str, prompt_version: str, answer: CachedAnswer) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                request_hash_,
                model,
                prompt_version,
                answer.content,
                answer.refusal,
                int(answer.input_tokens),
                int(answer.output_tokens),
                float(answer.cost_usd),
                time.time(),
            ),
        )

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def batch(self, batch_key: str) -> BatchRecord | None:
        row = self._db.execute("SELECT batch_id, input_file_id, request_count FROM batches WHERE batch_key = ?", (batch_key,)).fetchone()
        return BatchRecord(*row) if row else None

    def record_batch(self, batch_key: str, record: BatchRecord) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO batches VALUES (?, ?, ?, ?, ?)",
            (batch_key, record.batch_id, record.input_file_id, record.request_count, time.time()),
        )

    def forget_batch(self, batch_key: str) -> None:
        self._db.execute("DELETE FROM batches WHERE batch_key = ?", (batch_key,))


def _make_spare(spare: Path) -> None:
    """Write the spare file with real blocks (not a sparse file); no room for it is no error."""
    if spare.exists() and spare.stat().st_size >= SPARE_BYTES:
        return
    try:
        with open(spare, "wb") as handle:
            handle.write(b"\0" * SPARE_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        if not _is_out_of_space(exc):
            raise
        spare.unlink(missing_ok=True)
