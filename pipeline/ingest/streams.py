"""Files cut into bounded blocks of whole lines, never holding a whole file in memory.

A plain JSONL file is split into newline-aligned byte ranges that workers read independently;
a gzip file cannot be split, so it is streamed (:class:`GzipChunks`) and cut into blocks of
about ``block_size`` decompressed bytes. Either way :func:`cut_lines` turns a stream of bytes
into :class:`LineBlock`\\ s of whole lines with their 1-based line numbers, and sets aside lines
longer than ``max_line_bytes`` (and the partial line at a damaged or truncated gzip stream's
end) as rejects without ever buffering more than ``max_line_bytes`` of one line.

A damaged gzip stream keeps every byte zlib could decode before the damage, whatever the block
size: :class:`GzipChunks` replays the failing step from a copy of the decompressor, up to the
last input byte that still decodes, and reports that byte's offset in the compressed file.
"""

from __future__ import annotations

import queue
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec

from pipeline.ingest.sources import SourceFile

RAW_CHARS = 1000
"""Characters of a rejected line kept in the ``rejects`` table."""
READ_CHUNK = 4 * 1024 * 1024


@dataclass
class LineBlock:
    """Whole lines of one file: ``data`` holds lines ``first_line``, ``first_line + 1``, ...

    ``set_aside`` holds lines the reader did not buffer (over-long lines, the partial line at a
    damaged gzip stream's end) as ``(line, reason, raw)``; their numbers lie before
    ``first_line`` or after the last line of ``data``.
    """

    source: SourceFile
    first_line: int
    data: bytes
    set_aside: list[tuple[int, str, str]] = field(default_factory=list)
    source_bytes: int = 0
    """Bytes of the stored file this block accounts for (progress only)."""


@dataclass(frozen=True)
class StreamEnd:
    """Marks a stream that ended in error; its partial last line is rejected with ``reason``.

    ``offset`` is the byte of the stored (compressed) file where the stream broke.
    """

    reason: str
    offset: int | None = None

    def raw(self, partial: bytes) -> str:
        """The ``raw`` of the reject: where the stream broke, then the partial line."""
        where = "" if self.offset is None else f"[{self.reason} at byte {self.offset:,} of the compressed file] "
        return (where + raw_text(partial))[:RAW_CHARS]


def raw_text(line: bytes) -> str:
    """The ``raw`` column of a rejected line: its first :data:`RAW_CHARS` characters.

    Only the first ``4 * RAW_CHARS`` bytes are decoded (a character has at most 4 bytes), so
    a reader that kept only that prefix of a huge line reports the same text.
    """
    return line[: 4 * RAW_CHARS].decode("utf-8", "replace")[:RAW_CHARS]


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

    One function of ~75 lines on purpose: the block so far, the partial line and the skipping
    state change together at every chunk, and keeping them in one loop keeps that visible.
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
            set_aside.append((block_first, chunk.reason, chunk.raw(partial)))
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


class GzipDamage(Exception):
    """The gzip stream cannot be decoded past compressed byte ``offset``."""

    def __init__(self, offset: int):
        super().__init__(f"gzip stream damaged at byte {offset}")
        self.offset = offset


def _inflate(decompressor: Any, data: bytes | memoryview, limit: int) -> Iterator[bytes]:
    """Everything ``decompressor`` makes of ``data`` (up to its member's end), ``limit`` bytes at a time."""
    more = True
    while data or more:
        out = decompressor.decompress(data, limit)
        if out:
            yield out
        if decompressor.eof:
            return
        data = decompressor.unconsumed_tail
        more = len(out) == limit  # output held back by the limit, even with all input consumed


def _decodes(decompressor: Any, data: memoryview, limit: int) -> bool:
    try:
        for _ in _inflate(decompressor, data, limit):
            pass
    except zlib.error:
        return False
    return True


def _salvage(backup: Any, data: bytes, limit: int, offset: int) -> Iterator[bytes]:
    """The output of ``data`` up to the damage, then :class:`GzipDamage` at its byte offset.

    ``backup`` is the decompressor as it was before ``data`` failed. Whether a prefix of
    ``data`` decodes without error is monotone in its length, so the longest one is found by
    bisection (a rare path: a few dozen decodes of at most one read chunk).
    """
    view = memoryview(data)
    good, bad = 0, len(view)
    while bad - good > 1:
        middle = (good + bad) // 2
        if _decodes(backup.copy(), view[:middle], limit):
            good = middle
        else:
            bad = middle
    yield from _inflate(backup, view[:good], limit)
    raise GzipDamage(offset + good)


class _Inflater:
    """The members of one gzip stream, fed piece by piece; raises :class:`GzipDamage`."""

    def __init__(self, limit: int):
        self.limit = limit
        self.decompressor = zlib.decompressobj(wbits=31)
        self.in_member = False

    def feed(self, data: bytes, offset: int) -> Iterator[bytes]:
        """The output of ``data``, which starts at byte ``offset`` of the stored file."""
        more_output = False
        while data or more_output:
            if not self.in_member:
                if not data.strip(b"\x00"):
                    return  # zero padding after the last member, as gzip tools allow
                self.in_member = True
            backup = self.decompressor.copy()
            try:
                # Bounded output: a small, highly compressed input cannot blow up memory.
                out = self.decompressor.decompress(data, self.limit)
            except zlib.error:
                yield from _salvage(backup, data, self.limit, offset)
                return  # unreachable: _salvage raises
            if out:
                yield out
            if self.decompressor.eof:
                # A gzip file may hold several members back to back.
                rest = self.decompressor.unused_data
                offset += len(data) - len(rest)
                data = rest
                self.decompressor = zlib.decompressobj(wbits=31)
                self.in_member = more_output = False
            else:
                rest = self.decompressor.unconsumed_tail
                offset += len(data) - len(rest)
                data = rest
                more_output = len(out) == self.limit


class GzipChunks:
    """Decompressed chunks of a gzip file, ending in :class:`StreamEnd` if the file is damaged.

    Every byte zlib decodes before a damage is yielded, whatever ``chunk_size``; the
    :class:`StreamEnd` names the compressed byte where decoding stopped (``corrupt_gzip``) or
    the file's end (``truncated_gzip``). ``compressed_position`` tells how far into the stored
    file reading has got.
    """

    def __init__(self, source: SourceFile, chunk_size: int = READ_CHUNK):
        self.source = source
        self.chunk_size = chunk_size
        self.compressed_position = 0

    def __iter__(self) -> Iterator[bytes | StreamEnd]:
        inflater = _Inflater(self.chunk_size)
        with fsspec.open(self.source.url, "rb") as stored:
            try:
                while data := stored.read(self.chunk_size):
                    offset = self.compressed_position
                    self.compressed_position += len(data)
                    yield from inflater.feed(data, offset)
            except GzipDamage as damage:
                yield StreamEnd("corrupt_gzip", damage.offset)
                return
        if inflater.in_member:
            yield StreamEnd("truncated_gzip", self.compressed_position)


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
