"""The SQLite answer cache that makes annotation resumable and reruns free.

One row per request hash (a hash of model, prompt version, messages and generation parameters,
see :func:`request_hash`). Every answer is committed the moment it arrives, in WAL mode, so a
run killed with SIGKILL at any point keeps every answer it received and a rerun sends none of
those requests again. WAL lets Dask workers read the cache while the process that sends the
requests writes it; ``INSERT OR IGNORE`` plus a busy timeout makes concurrent writers from
several processes safe (the first answer for a hash wins, later ones are identical requests).
The same file records submitted Batch API jobs so a rerun resumes them instead of resubmitting.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CACHE_FILE = "annotation_cache.sqlite"
_LOOKUP_CHUNK = 500  # SQLite's bound-parameter limit is 999 on old builds
_BUSY_TIMEOUT_S = 60.0

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


class AnswerCache:
    """Answers by request hash in ``RUN/annotation_cache.sqlite`` (safe across processes)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
        """Store one answer (committed at once; an existing answer for the hash is kept)."""
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
