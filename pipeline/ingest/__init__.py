"""``rrec ingest``: raw Amazon Reviews 2023 files into the ``interactions``, ``items`` and ``rejects`` tables.

Every input line ends either as a row of ``interactions`` / ``items`` or as a ``rejects`` row
with its file, line and a registered reason (:mod:`core.reasons`); the stage never stops on bad
data. One module per responsibility:

- :mod:`~pipeline.ingest.settings`: :class:`IngestSettings` and shared constants;
- :mod:`~pipeline.ingest.sources`: named inputs -> files (paths, globs, URLs, ``hub:``), their
  hashes and provenance (synthetic or real);
- :mod:`~pipeline.ingest.streams`: files -> bounded blocks of whole lines (byte ranges, gzip
  streams that keep everything before a damage);
- :mod:`~pipeline.ingest.records`: the per-line reference form (one record -> one row or a
  reject reason), with the valid-record bounds of :mod:`core.records`;
- :mod:`~pipeline.ingest.fastpath`: the bulk Arrow reader, vouching only for rows equal to the
  reference form;
- :mod:`~pipeline.ingest.blocks`: pure per-block functions combining the two;
- :mod:`~pipeline.ingest.tasks`, :mod:`~pipeline.ingest.schedule`, :mod:`~pipeline.ingest.items`:
  the Dask tasks, their submission, the item dedupe;
- :mod:`~pipeline.ingest.stage`: :class:`IngestStage` (``INGEST``), :func:`run_ingest` and the command.
"""

from pipeline.ingest.blocks import (
    SMALLEST_FAST_SLICE,
    ParsedBlock,
    parse_meta_block,
    parse_meta_rows,
    parse_review_block,
    parse_review_rows,
)
from pipeline.ingest.fastpath import META_READER, RAW_META, REVIEW_READER, FastReader, LineSlice
from pipeline.ingest.records import RAW_REVIEW, REVIEW_KEYS, RecordRejected, meta_values, parse_price, review_values, strip_html
from pipeline.ingest.settings import STAGE, IngestSettings
from pipeline.ingest.sources import (
    SIDECAR_SUFFIX,
    IngestSources,
    InputError,
    SourceFile,
    content_hash,
    domain_from_name,
    expand_inputs,
    read_sidecar,
    resolve_sources,
)
from pipeline.ingest.stage import INGEST, IngestStage, register, run_ingest
from pipeline.ingest.streams import GzipChunks, LineBlock, StreamEnd, cut_lines, gzip_blocks_ahead, raw_text

__all__ = [
    "INGEST",
    "META_READER",
    "RAW_META",
    "RAW_REVIEW",
    "REVIEW_KEYS",
    "REVIEW_READER",
    "SIDECAR_SUFFIX",
    "SMALLEST_FAST_SLICE",
    "STAGE",
    "FastReader",
    "GzipChunks",
    "IngestSettings",
    "IngestSources",
    "IngestStage",
    "InputError",
    "LineBlock",
    "LineSlice",
    "ParsedBlock",
    "RecordRejected",
    "SourceFile",
    "StreamEnd",
    "content_hash",
    "cut_lines",
    "domain_from_name",
    "expand_inputs",
    "gzip_blocks_ahead",
    "meta_values",
    "parse_meta_block",
    "parse_meta_rows",
    "parse_price",
    "parse_review_block",
    "parse_review_rows",
    "raw_text",
    "read_sidecar",
    "register",
    "resolve_sources",
    "review_values",
    "run_ingest",
    "strip_html",
]
