"""Where ingest's input comes from: names expanded into files, files cut into bounded blocks.

A user names inputs as local paths, globs, fsspec URLs (``file://``, ``s3://`` ...) or
``hub:<Domain>`` (a file of the McAuley-Lab/Amazon-Reviews-2023 dataset repository, fetched
with ``huggingface_hub``). :func:`expand_inputs` turns those names into a sorted list of
:class:`SourceFile`; the position in that list is the file's ``src_file``.

The readers never hold a whole file in memory. A plain JSONL file is split into newline-aligned
byte ranges that workers read independently; a gzip file cannot be split, so it is streamed and
cut into blocks of about ``block_size`` decompressed bytes. Either way :func:`cut_lines` turns a
stream of bytes into :class:`LineBlock`\\ s of whole lines with their 1-based line numbers, and
sets aside lines longer than ``max_line_bytes`` (and a truncated gzip tail) as rejects without
ever buffering more than ``max_line_bytes`` of one line.
"""

from __future__ import annotations

import glob
import logging
import os
import queue
import re
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec

log = logging.getLogger(__name__)

RAW_CHARS = 1000
"""Characters of a rejected line kept in the ``rejects`` table."""

READ_CHUNK = 4 * 1024 * 1024
HUB_PREFIX = "hub:"
HUB_FILES = {
    "reviews": "raw/review_categories/{domain}.jsonl",
    "meta": "raw/meta_categories/meta_{domain}.jsonl",
}
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


@dataclass
class LineBlock:
    """Whole lines of one file: ``data`` holds lines ``first_line``, ``first_line + 1``, ...

    ``set_aside`` holds lines the reader did not buffer (over-long lines, a truncated gzip
    tail) as ``(line, reason, raw)``; their numbers lie before ``first_line`` or after the last
    line of ``data``.
    """

    source: SourceFile
    first_line: int
    data: bytes
    set_aside: list[tuple[int, str, str]] = field(default_factory=list)
    source_bytes: int = 0
    """Bytes of the stored file this block accounts for (progress only)."""


@dataclass(frozen=True)
class StreamEnd:
    """Marks a stream that ended in error; its partial last line is rejected with ``reason``."""

    reason: str


def raw_text(line: bytes) -> str:
    """The ``raw`` column of a rejected line: its first :data:`RAW_CHARS` characters.

    Only the first ``4 * RAW_CHARS`` bytes are decoded (a character has at most 4 bytes), so
    a reader that kept only that prefix of a huge line reports the same text.
    """
    return line[: 4 * RAW_CHARS].decode("utf-8", "replace")[:RAW_CHARS]


# -- naming inputs -------------------------------------------------------------------------


def _hub_download(domain: str, kind: str, repo: str) -> tuple[str, str]:
    """Fetch one file of the Amazon Reviews 2023 dataset repo; returns (report name, local path)."""
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
        return name, hf_hub_download(repo_id=repo, filename=filename, repo_type="dataset")
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


def _expand_one(pattern: str, kind: str, hub_repo: str) -> list[tuple[str, str]]:
    """(report name, url) of every file one named input stands for (a folder: the files in it)."""
    if pattern.startswith(HUB_PREFIX):
        return [_hub_download(pattern[len(HUB_PREFIX) :], kind, hub_repo)]
    if "://" in pattern:
        fs, path = fsspec.core.url_to_fs(pattern)
        paths = fs.glob(path) if _GLOB_CHARS.search(path) else ([path] if fs.exists(path) else [])
        files = [f for p in paths for f in (sorted(fs.find(p)) if fs.isdir(p) else [p]) if not _hidden(f)]
        return [(fs.unstrip_protocol(f), fs.unstrip_protocol(f)) for f in files] if files else _no_match(pattern, kind)
    expanded = os.path.expanduser(pattern)
    paths = glob.glob(expanded, recursive=True) if _GLOB_CHARS.search(expanded) else [expanded]
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
        elif os.path.isfile(path):
            files.append(path)
    files = [f for f in files if not _hidden(f)]
    return [(f, f) for f in files] if files else _no_match(pattern, kind)


def _hidden(path: str) -> bool:
    """Dot files (``.DS_Store``, ``.gitattributes``, partial downloads) are never data."""
    return path.rstrip("/").rsplit("/", 1)[-1].startswith(".")


def _no_match(pattern: str, kind: str) -> list[tuple[str, str]]:
    raise InputError(f"no {kind} file matches '{pattern}'; check the path (quote globs so the shell does not expand them)")


def expand_inputs(patterns: Iterable[str], kind: str, hub_repo: str) -> list[SourceFile]:
    """Every file the named inputs stand for, sorted by name, numbered, with its format.

    ``patterns`` are local paths, folders (every file inside, recursively, except dot files),
    globs (``**`` recurses), fsspec URLs (globs and folders allowed) or ``hub:<Domain>``; ``kind`` is ``reviews`` or ``meta`` (it picks the Hub file).
    """
    found: dict[str, str] = {}
    for pattern in patterns:
        for name, url in _expand_one(str(pattern), kind, hub_repo):
            found.setdefault(name, url)
    sources = []
    for index, name in enumerate(sorted(found)):
        url = found[name]
        fs, path = fsspec.core.url_to_fs(url)
        sources.append(SourceFile(name=name, url=url, kind=kind, index=index, format=_sniff_format(url), size=int(fs.size(path))))
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


# -- cutting streams into blocks -----------------------------------------------------------


def cut_lines(
    chunks: Iterable[bytes | StreamEnd],
    source: SourceFile,
    first_line: int,
    block_size: int,
    max_line_bytes: int,
) -> Iterator[LineBlock]:
    """Cut a byte stream into blocks of whole lines of about ``block_size`` bytes.

    A block ends at the last line end of the chunk that brought it to ``block_size``. A line
    longer than ``max_line_bytes`` that is still incomplete is not buffered: the block so far is
    emitted, the line's first bytes are kept for ``raw`` and the rest is skipped up to its line
    end. A :class:`StreamEnd` turns the partial last line into a reject with its reason. Lines
    are separated by ``\\n``; a last line without one is still a line.
    """
    parts: list[bytes] = []
    size = 0
    lines = 0
    block_first = first_line
    set_aside: list[tuple[int, str, str]] = []
    partial = b""
    skipping = False  # inside an over-long line; ``partial`` holds only its prefix

    def emit() -> LineBlock:
        nonlocal parts, size, lines, block_first, set_aside
        whole = parts[0].obj if len(parts) == 1 and isinstance(parts[0], memoryview) else None
        # A block that is one whole chunk is that chunk, not a copy of it.
        data = whole if isinstance(whole, bytes) and len(whole) == len(parts[0]) else b"".join(parts)
        block = LineBlock(source, block_first, data, set_aside)
        block_first += lines
        parts, size, lines, set_aside = [], 0, 0, []
        return block

    for chunk in chunks:
        if isinstance(chunk, StreamEnd):
            # The stream broke inside or right after a line: that line (maybe empty) is lost.
            if parts:
                yield emit()
            set_aside.append((block_first, chunk.reason, raw_text(partial)))
            block_first += 1
            partial, skipping = b"", False
            break
        if skipping:
            end = chunk.find(b"\n")
            if end < 0:
                continue
            set_aside.append((block_first, "line_too_long", raw_text(partial)))
            block_first += 1
            partial, skipping = b"", False
            chunk = chunk[end + 1 :]
        last = chunk.rfind(b"\n")
        if last < 0:
            partial += chunk
        else:
            # Views, not copies: the block's bytes are copied once, when it is joined.
            if partial:
                parts.append(partial)
            parts.append(memoryview(chunk)[: last + 1])
            size += len(partial) + last + 1
            lines += chunk.count(b"\n", 0, last + 1)
            partial = chunk[last + 1 :]
        if len(partial) > max_line_bytes:
            if parts:
                yield emit()
            partial = partial[: 4 * RAW_CHARS]
            skipping = True
        elif size >= block_size:
            yield emit()
    if skipping:
        set_aside.append((block_first, "line_too_long", raw_text(partial)))
        block_first += 1
    elif partial:
        parts.append(partial)
        lines += 1
    if parts or set_aside:
        yield emit()


class GzipChunks:
    """Decompressed chunks of a gzip file, ending in :class:`StreamEnd` if the file is damaged.

    ``compressed_position`` tells how far into the stored file reading has got.
    """

    def __init__(self, source: SourceFile, chunk_size: int = READ_CHUNK):
        self.source = source
        self.chunk_size = chunk_size
        self.compressed_position = 0

    def __iter__(self) -> Iterator[bytes | StreamEnd]:
        with fsspec.open(self.source.url, "rb") as stored:
            decompressor = zlib.decompressobj(wbits=31)
            in_member = False
            while data := stored.read(self.chunk_size):
                self.compressed_position += len(data)
                more_output = False
                while data or more_output:
                    if not in_member:
                        if not data.strip(b"\x00"):
                            break  # zero padding after the last member, as gzip tools allow
                        in_member = True
                    try:
                        # Bounded output: a small, highly compressed input cannot blow up memory.
                        out = decompressor.decompress(data, self.chunk_size)
                    except zlib.error:
                        yield StreamEnd("corrupt_gzip")
                        return
                    if out:
                        yield out
                    if decompressor.eof:
                        # A gzip file may hold several members back to back.
                        data = decompressor.unused_data
                        decompressor = zlib.decompressobj(wbits=31)
                        in_member = more_output = False
                    else:
                        data = decompressor.unconsumed_tail
                        more_output = len(out) == self.chunk_size
            if in_member:
                yield StreamEnd("truncated_gzip")


def gzip_blocks_ahead(source: SourceFile, block_size: int, max_line_bytes: int, ahead: int = 2) -> Iterator[LineBlock]:
    """The blocks of a gzip file, decompressed and cut by a background thread.

    zlib releases the GIL while it inflates, so the next blocks are prepared while the caller
    ships the current one to a worker; at most ``ahead`` finished blocks wait in memory.
    """
    stream = GzipChunks(source, chunk_size=min(block_size, READ_CHUNK))
    ready: queue.Queue[LineBlock | BaseException | None] = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def offer(item: LineBlock | BaseException | None) -> bool:
        """Queue ``item`` unless the consumer has gone; False when it has."""
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        consumed = 0
        try:
            for block in cut_lines(stream, source, 1, block_size, max_line_bytes):
                block.source_bytes = stream.compressed_position - consumed
                consumed = stream.compressed_position
                if not offer(block):
                    return
            offer(None)
        except BaseException as exc:  # handed to the consumer, which raises it
            offer(exc)

    producer = threading.Thread(target=produce, name=f"gunzip {source.name}", daemon=True)
    producer.start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        producer.join()


def plain_range_start(url: str, nominal_start: int, nominal_end: int) -> int | None:
    """First line start in ``[nominal_start, nominal_end)`` of a plain file, or None if none."""
    if nominal_start == 0:
        return 0
    with fsspec.open(url, "rb") as handle:
        handle.seek(nominal_start - 1)
        position = nominal_start - 1
        while position < nominal_end:
            chunk = handle.read(min(READ_CHUNK, nominal_end - position))
            if not chunk:
                return None
            found = chunk.find(b"\n")
            if found >= 0:
                start = position + found + 1
                return start if start < nominal_end else None
            position += len(chunk)
    return None


def plain_range_chunks(url: str, start: int, nominal_end: int, max_line_bytes: int) -> Iterator[bytes]:
    """The bytes of the lines that start in ``[start, nominal_end)``, in chunks.

    Reading goes past ``nominal_end`` only to finish the line in progress. When that last line
    ends within ``max_line_bytes`` of ``nominal_end`` the whole range comes as one chunk from one
    read (one copy of the bytes instead of a read per chunk plus a join); otherwise it comes
    chunk by chunk, so :func:`cut_lines` can set an over-long last line aside without buffering it.
    """
    with fsspec.open(url, "rb") as handle:
        tail = _bytes_to_line_end(handle, nominal_end, max_line_bytes)
        if tail is not None:
            handle.seek(start)
            yield handle.read(nominal_end + tail - start)
            return
        handle.seek(start)
        position = start
        while position < nominal_end:
            chunk = handle.read(min(READ_CHUNK, nominal_end - position))
            if not chunk:
                return
            position += len(chunk)
            yield chunk
        if chunk.endswith(b"\n"):
            return
        while chunk := handle.read(READ_CHUNK):
            end = chunk.find(b"\n")
            if end >= 0:
                yield chunk[: end + 1]
                return
            yield chunk


def _bytes_to_line_end(handle: Any, position: int, limit: int) -> int | None:
    """How many bytes from ``position`` up to and including the next newline (or the end of
    the file), or None when there are more than ``limit`` (the line in progress is over-long)."""
    if position > 0:
        handle.seek(position - 1)
        if handle.read(1) == b"\n":
            return 0
    handle.seek(position)
    seen = 0
    while seen <= limit:
        chunk = handle.read(min(READ_CHUNK, limit + 1 - seen))
        if not chunk:
            return seen
        end = chunk.find(b"\n")
        if end >= 0:
            return seen + end + 1
        seen += len(chunk)
    return None


def count_newlines(url: str, start: int, end: int) -> int:
    """Number of ``\\n`` bytes in ``[start, end)`` of a file (to number lines of later ranges)."""
    count = 0
    with fsspec.open(url, "rb") as handle:
        handle.seek(start)
        remaining = end - start
        while remaining > 0:
            chunk = handle.read(min(READ_CHUNK, remaining))
            if not chunk:
                break
            count += chunk.count(b"\n")
            remaining -= len(chunk)
    return count
