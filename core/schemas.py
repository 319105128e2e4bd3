"""Explicit Arrow schemas of every table (DESIGN.md, "Tables"). The single source of truth."""

from __future__ import annotations

import pyarrow as pa

INTERACTIONS = pa.schema(
    [
        ("user_id", pa.string()),
        ("parent_asin", pa.string()),
        ("asin", pa.string()),
        ("rating", pa.float32()),
        ("timestamp", pa.int64()),
        ("review_title", pa.string()),
        ("review_text", pa.string()),
        ("helpful_vote", pa.int32()),
        ("verified_purchase", pa.bool_()),
        ("src_file", pa.int32()),
        ("src_line", pa.int64()),
    ]
)

ITEMS = pa.schema(
    [
        ("parent_asin", pa.string()),
        ("title", pa.string()),
        ("main_category", pa.string()),
        ("categories", pa.list_(pa.string())),
        ("store", pa.string()),
        ("price", pa.float64()),
        ("average_rating", pa.float32()),
        ("rating_number", pa.int32()),
        ("features", pa.list_(pa.string())),
        ("description", pa.string()),
        ("details", pa.string()),
    ]
)

REJECTS = pa.schema(
    [
        ("source_file", pa.string()),
        ("line", pa.int64()),
        ("reason", pa.string()),
        ("raw", pa.string()),
    ]
)

HISTORY_ITEM = pa.struct(
    [
        ("parent_asin", pa.string()),
        ("title", pa.string()),
        ("rating", pa.float32()),
        ("timestamp", pa.int64()),
    ]
)

TARGET = pa.struct(
    [
        ("parent_asin", pa.string()),
        ("title", pa.string()),
        ("categories", pa.list_(pa.string())),
        ("store", pa.string()),
        ("rating", pa.float32()),
        ("timestamp", pa.int64()),
    ]
)

CANDIDATE = pa.struct([("parent_asin", pa.string()), ("title", pa.string())])

SEQUENCES = pa.schema(
    [
        ("user_id", pa.string()),
        ("split", pa.string()),
        ("history", pa.list_(HISTORY_ITEM)),
        ("target", TARGET),
        ("candidates", pa.list_(CANDIDATE)),
        ("target_index", pa.int32()),
    ]
)

SPLITS = ("train", "validation", "test")
ITEMS_SPLIT = "items"
"""The one split of a release's item-catalog configs (``<config>_items``)."""

_ANNOTATION_FIELDS = [
    ("user_id", pa.string()),
    ("split", pa.string()),
    ("target_parent_asin", pa.string()),
    ("rationale", pa.string()),
    ("user_preferences", pa.string()),
    ("coherent", pa.bool_()),
    ("annotator", pa.string()),
    ("model", pa.string()),
    ("prompt_version", pa.string()),
    ("input_tokens", pa.int32()),
    ("output_tokens", pa.int32()),
    ("request_hash", pa.string()),
]

ANNOTATIONS = pa.schema(_ANNOTATION_FIELDS)
FILTERED = pa.schema(_ANNOTATION_FIELDS)
FILTER_REJECTS = pa.schema([*_ANNOTATION_FIELDS, ("reason", pa.string())])

# One row of a released split (data/<config>/<split>-*.parquet). The split is the file, not a
# column. Train rows are the sequences whose rationale passed the self-filter; validation and
# test rows are every sequence of that split, with null rationale fields unless they were
# annotated (`rrec annotate --splits`).
RELEASE_ROW = pa.schema(
    [
        ("user_id", pa.string()),
        ("history", pa.list_(HISTORY_ITEM)),
        ("target", TARGET),
        ("candidates", pa.list_(CANDIDATE)),
        ("target_index", pa.int32()),
        ("rationale", pa.string()),
        ("user_preferences", pa.string()),
        ("annotator", pa.string()),
        ("model", pa.string()),
        ("prompt_version", pa.string()),
    ]
)

TABLE_SCHEMAS: dict[str, pa.Schema] = {
    "interactions": INTERACTIONS,
    "items": ITEMS,
    "rejects": REJECTS,
    "sequences": SEQUENCES,
    "annotations": ANNOTATIONS,
    "filtered": FILTERED,
    "filter_rejects": FILTER_REJECTS,
}
