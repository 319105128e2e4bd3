"""The per-partition part: rows, histories and candidates of one partition of users.

Pure functions of one partition's events and the catalog; the draws come from
:mod:`pipeline.sequences.streams`, so the rows do not depend on the partitioning.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from core.schemas import CANDIDATE, HISTORY_ITEM, SEQUENCES, SPLITS, TARGET
from core.stage import StageError
from pipeline.sequences.selection import UserEvents, concat_ranges
from pipeline.sequences.settings import SequencesSettings
from pipeline.sequences.streams import bounded, mix64, row_stream_keys, stream_codes, user_stream_keys

# Per-user work is cut into chunks of about this many output list elements (history entries
# plus candidates), which bounds a worker's memory whatever the partition size (about 0.7 GB
# above the catalog); a chunk is one Parquet row group. Each row group repeats the dictionary
# pages of ids and titles (with candidate lists, nearly the whole catalog: at 617k items about
# 0.34 s of CPU and 7 MB of file per row group, whatever its rows), so row groups are large.
CHUNK_ELEMENTS = 48_000_000
_SHUFFLE_SALT = np.uint64(0x5F3C_1A2B_77E1_D00D)
# Draws per block of rows in `draw_negatives` (the 64-bit mixes of a block take 4 bytes each).
_DRAW_BLOCK_ELEMENTS = 2_000_000
_SPLIT_CODE = {name: code for code, name in enumerate(SPLITS)}
_TRAIN, _VALIDATION, _TEST = (_SPLIT_CODE[s] for s in ("train", "validation", "test"))


@dataclass
class DistinctStrings:
    """A string column of the catalog as its distinct values plus one code per item (-1: null).

    Parquet writes a dictionary array as it is only when its dictionary has no repeats
    (titles repeat across items), hence the distinct values.
    """

    values: pa.Array
    codes: np.ndarray

    def __post_init__(self) -> None:
        self.has_nulls = bool((self.codes < 0).any())
        # Distinct ids (parent_asin) code themselves: no lookup needed.
        self.identity = (
            not self.has_nulls and len(self.values) == len(self.codes) and bool((self.codes == np.arange(len(self.codes))).all())
        )

    @classmethod
    def of(cls, column: pa.Array) -> DistinctStrings:
        encoded = column.dictionary_encode()
        return cls(encoded.dictionary, pc.fill_null(encoded.indices, -1).to_numpy().astype(np.int32))

    def take(self, items: np.ndarray) -> pa.DictionaryArray:
        """The strings of catalog ``items``, as a dictionary array.

        The dictionary holds only the values used, except when there are so many items that
        nearly every value is used anyway (a chunk's candidate lists): then the whole set of
        values, which saves finding the used ones.
        """
        value_codes = items.astype(np.int32, copy=False) if self.identity else self.codes[items]
        present = value_codes >= 0 if self.has_nulls else None
        mask = None if present is None or present.all() else ~present
        if len(items) >= 8 * len(self.values):
            return pa.DictionaryArray.from_arrays(pa.array(value_codes, pa.int32(), mask=mask), self.values)
        used = np.bincount(value_codes[present] if present is not None else value_codes, minlength=len(self.values)) > 0
        # New position of each used value; the extra last entry serves the -1 (null) codes.
        remap = np.zeros(len(self.values) + 1, dtype=np.int32)
        remap[:-1] = np.cumsum(used, dtype=np.int64) - 1
        indices = pa.array(remap[value_codes], pa.int32(), mask=mask)
        return pa.DictionaryArray.from_arrays(indices, self.values.take(pa.array(np.flatnonzero(used))))


@dataclass
class Catalog:
    """Candidate items in code order, with the metadata the sequences carry (null if none)."""

    parent_asin: pa.Array
    title: pa.Array
    categories: pa.Array
    store: pa.Array
    without_metadata: int = 0  # catalog items with no row in ``items``

    def __post_init__(self) -> None:
        self.strings = {name: DistinctStrings.of(getattr(self, name)) for name in ("parent_asin", "title", "store")}

    def __len__(self) -> int:
        return len(self.parent_asin)

    @classmethod
    def from_items(cls, catalog_asins: pa.Array, items: pa.Table) -> Catalog:
        """Join item metadata (first row per parent_asin) onto the catalog ids."""
        position = pc.index_in(catalog_asins, value_set=items["parent_asin"].combine_chunks())
        return cls(
            parent_asin=catalog_asins,
            title=items["title"].combine_chunks().take(position),
            categories=items["categories"].combine_chunks().take(position),
            store=items["store"].combine_chunks().take(position),
            without_metadata=position.null_count,
        )

    def to_table(self) -> pa.Table:
        return pa.table({"parent_asin": self.parent_asin, "title": self.title, "categories": self.categories, "store": self.store})

    @classmethod
    def from_table(cls, table: pa.Table) -> Catalog:
        return cls(*(table.column(name).combine_chunks() for name in ("parent_asin", "title", "categories", "store")))


def check_catalog_size(catalog_size: int, longest_sequence: int, num_negatives: int) -> None:
    """A clear error when some user cannot get ``num_negatives`` distinct negatives."""
    available = catalog_size - longest_sequence
    if longest_sequence and available < num_negatives:
        raise StageError(
            f"the catalog has {catalog_size} items and the longest user sequence {longest_sequence}, so only "
            f"{max(available, 0)} negatives can be drawn for that user but num_negatives is {num_negatives}; "
            f"lower --num-negatives to at most {max(available, 0)} or use more data"
        )


def draw_negatives(row_keys: np.ndarray, row_user: np.ndarray, events: UserEvents, catalog_size: int, num_negatives: int) -> np.ndarray:
    """``num_negatives`` distinct catalog codes per row, none in the row's user's sequence.

    Uniform sampling without replacement by rejection: each row walks its own stream of
    uniform catalog codes and keeps the first ``num_negatives`` codes that are neither in the
    user's sequence nor already taken. The walk is a pure function of the row key, so rows
    needing a longer walk are redone with a longer prefix of the same stream.
    """
    n_rows = len(row_keys)
    result = np.empty((n_rows, num_negatives), dtype=np.int32)
    if n_rows == 0 or num_negatives == 0:
        return result
    # (user, item) codes of every user's sequence, for exact membership tests, and a 64-bit
    # signature per user (bit ``item % 64`` of each of its items): a draw whose bit is clear
    # in its user's signature is not in the sequence, which spares most draws the exact test.
    lengths = np.diff(events.offsets)
    event_user = np.repeat(np.arange(events.num_users, dtype=np.int64), lengths)
    sequence_pairs = event_user * catalog_size + events.item
    signature = np.zeros(events.num_users, dtype=np.uint64)
    if events.num_events:
        bits = np.left_shift(np.uint64(1), (events.item & 63).astype(np.uint64))
        has_events = lengths > 0
        signature[has_events] = np.bitwise_or.reduceat(bits, events.offsets[:-1][has_events])
    # Draw a little more than needed: about n^2/2N repeats and n*L/N sequence items are
    # expected among n draws from N items. Rows that fall short are redone with a longer
    # prefix of their stream.
    longest = int(lengths.max(initial=0))
    expected_rejects = num_negatives * (num_negatives / (2 * catalog_size) + longest / catalog_size)
    first_width = num_negatives + 4 + math.ceil(2 * expected_rejects)
    # Rows go in blocks whose temporaries stay a few MiB: memory the allocator reuses from
    # block to block instead of fresh pages the kernel must map and zero each time.
    block_rows = max(1, _DRAW_BLOCK_ELEMENTS // first_width)
    for block_start in range(0, n_rows, block_rows):
        rows = np.arange(block_start, min(block_start + block_rows, n_rows))
        # Only the sequences of the block's users (a range of them: rows come by user) enter
        # the exact test's hash table.
        users = row_user[rows]
        first_event, last_event = events.offsets[users.min()], events.offsets[users.max() + 1]
        _draw_block(
            rows,
            first_width,
            row_keys,
            row_user,
            signature,
            sequence_pairs[first_event:last_event],
            catalog_size,
            num_negatives,
            result,
        )
    return result


def _draw_block(
    pending: np.ndarray,
    width: int,
    row_keys: np.ndarray,
    row_user: np.ndarray,
    signature: np.ndarray,
    sequence_pairs: np.ndarray,
    catalog_size: int,
    num_negatives: int,
    result: np.ndarray,
) -> None:
    """The negatives of rows ``pending`` into ``result`` (see :func:`draw_negatives`)."""
    while len(pending):
        codes = stream_codes(row_keys[pending], width, catalog_size)
        users = row_user[pending]
        maybe = ((signature[users][:, None] >> (codes & 63).astype(np.uint64)) & np.uint64(1)).astype(bool)
        unusable = _repeats_in_row(codes)
        suspects = np.flatnonzero(maybe)
        if len(suspects):
            pairs = users[suspects // width].astype(np.int64) * catalog_size + codes.reshape(-1)[suspects]
            unusable.reshape(-1)[suspects] |= pd.Series(pairs, copy=False).isin(sequence_pairs).to_numpy()
        # Rows whose first num_negatives draws are all usable take them as they are.
        clean = ~unusable[:, :num_negatives].any(axis=1)
        result[pending[clean]] = codes[clean, :num_negatives]
        dirty = np.flatnonzero(~clean)
        if len(dirty):
            usable = ~unusable[dirty]
            taken = np.cumsum(usable, axis=1, dtype=np.int32)
            done = taken[:, -1] >= num_negatives
            chosen = usable[done] & (taken[done] <= num_negatives)
            result[pending[dirty[done]]] = codes[dirty[done]][chosen].reshape(-1, num_negatives)
            dirty = dirty[~done]
        pending = pending[dirty]
        width *= 2


def _repeats_in_row(codes: np.ndarray) -> np.ndarray:
    """True where a value already occurred earlier in its row."""
    ranked = np.sort(codes, axis=1)
    rows = np.flatnonzero((ranked[:, 1:] == ranked[:, :-1]).any(axis=1))
    repeat = np.zeros(codes.shape, dtype=bool)
    if len(rows):
        # Only rows with a repeat pay for the stable sort that tells first from later ones.
        order = np.argsort(codes[rows], axis=1, kind="stable")
        ranked = np.take_along_axis(codes[rows], order, axis=1)
        later = np.zeros(order.shape, dtype=bool)
        later[:, 1:] = ranked[:, 1:] == ranked[:, :-1]
        in_rows = np.empty_like(later)
        np.put_along_axis(in_rows, order, later, axis=1)
        repeat[rows] = in_rows
    return repeat


def insert_targets(row_keys: np.ndarray, targets: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate lists: the target inserted at a uniform random position among the negatives.

    The negatives come in the random order of their draws, so this is a uniformly shuffled
    candidate list without sorting. Returns (candidates, target_index).
    """
    n_rows, n_negatives = negatives.shape
    target_index = bounded((mix64(row_keys ^ _SHUFFLE_SALT) >> np.uint64(32)).astype(np.uint32), n_negatives + 1)
    column = np.arange(n_negatives + 1)[None, :]
    before = column < target_index[:, None]
    # Negatives before the target keep their column, those after it move one to the right.
    candidates = np.empty((n_rows, n_negatives + 1), dtype=np.int32)
    candidates[:, 1:] = negatives
    candidates[:, :-1][before[:, :-1]] = negatives[before[:, :-1]]
    candidates[column == target_index[:, None]] = targets
    return candidates, target_index.astype(np.int32)


def example_positions(events: UserEvents, train_targets: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row_user, target_position, split_code) of every example, by user then position."""
    lengths = np.diff(events.offsets)
    first = np.zeros_like(lengths) if train_targets == "all" else np.maximum(lengths - 3, 0)
    per_user = lengths - first
    row_user = np.repeat(np.arange(events.num_users), per_user)
    row_first = np.zeros(len(per_user), dtype=np.int64)
    np.cumsum(per_user[:-1], out=row_first[1:])
    position = first[row_user] + np.arange(len(row_user)) - row_first[row_user]
    remaining = lengths[row_user] - position
    split = np.where(remaining == 1, _TEST, np.where(remaining == 2, _VALIDATION, _TRAIN)).astype(np.int8)
    return row_user, position.astype(np.int64), split


def _dictionary_twin(struct: pa.StructType, names: set[str]) -> pa.StructType:
    return pa.struct([f.with_type(_CATALOG_STRING) if f.name in names else f for f in struct])


# The SEQUENCES schema with the strings that come from the catalog dictionary-encoded: rows
# hold catalog codes instead of copies of titles (a candidate list is 100 titles), and the
# Parquet writer stores the dictionary pages as they are instead of hashing every string.
# Files written from it read back as plain SEQUENCES (see `build_partition`).
_CATALOG_STRING = pa.dictionary(pa.int32(), pa.string())
ENCODED_SEQUENCES = pa.schema(
    [
        SEQUENCES.field("user_id"),
        SEQUENCES.field("split"),
        SEQUENCES.field("history").with_type(pa.list_(_dictionary_twin(HISTORY_ITEM, {"parent_asin", "title"}))),
        SEQUENCES.field("target").with_type(_dictionary_twin(TARGET, {"parent_asin", "title", "store"})),
        SEQUENCES.field("candidates").with_type(pa.list_(_dictionary_twin(CANDIDATE, {"parent_asin", "title"}))),
        SEQUENCES.field("target_index"),
    ]
)


def build_sequence_rows(events: UserEvents, catalog: Catalog, settings: SequencesSettings) -> pa.Table:
    """The ``sequences`` rows of some users (by user, then position), in ENCODED_SEQUENCES.

    ``.cast(SEQUENCES)`` gives the plain table; written by `build_partition`, the file reads
    back as SEQUENCES directly.
    """
    row_user, position, split = example_positions(events, settings.train_targets)
    target_event = events.offsets[row_user] + position
    history_start = events.offsets[row_user]
    if settings.max_history:
        history_start = np.maximum(history_start, target_event - settings.max_history)
    history_events, history_offsets = concat_ranges(history_start, target_event)

    history_items = events.item[history_events]
    history = pa.ListArray.from_arrays(
        pa.array(history_offsets, pa.int32()),
        pa.StructArray.from_arrays(
            [
                catalog.strings["parent_asin"].take(history_items),
                catalog.strings["title"].take(history_items),
                pa.array(events.rating[history_events], pa.float32()),
                pa.array(events.timestamp[history_events], pa.int64()),
            ],
            fields=list(ENCODED_SEQUENCES.field("history").type.value_type),
        ),
    )
    target_codes = events.item[target_event]
    target = pa.StructArray.from_arrays(
        [
            catalog.strings["parent_asin"].take(target_codes),
            catalog.strings["title"].take(target_codes),
            catalog.categories.take(pa.array(target_codes)),
            catalog.strings["store"].take(target_codes),
            pa.array(events.rating[target_event], pa.float32()),
            pa.array(events.timestamp[target_event], pa.int64()),
        ],
        fields=list(ENCODED_SEQUENCES.field("target").type),
    )

    user_ids = events.user_ids.to_pylist()
    row_keys = row_stream_keys(user_stream_keys(settings.seed, user_ids)[row_user], position)
    negatives = draw_negatives(row_keys, row_user, events, len(catalog), settings.num_negatives)
    candidate_codes, target_index = insert_targets(row_keys, target_codes, negatives)
    width = settings.num_negatives + 1
    candidate_codes = candidate_codes.reshape(-1)
    candidates = pa.ListArray.from_arrays(
        pa.array(np.arange(0, len(row_user) * width + 1, width), pa.int32()),
        pa.StructArray.from_arrays(
            [catalog.strings["parent_asin"].take(candidate_codes), catalog.strings["title"].take(candidate_codes)],
            fields=list(ENCODED_SEQUENCES.field("candidates").type.value_type),
        ),
    )
    return pa.Table.from_arrays(
        [
            events.user_ids.take(pa.array(row_user, pa.int64())),
            pa.array(SPLITS).take(pa.array(split)),
            history,
            target,
            candidates,
            pa.array(target_index, pa.int32()),
        ],
        schema=ENCODED_SEQUENCES,
    )


def user_chunks(events: UserEvents, settings: SequencesSettings, max_elements: int = CHUNK_ELEMENTS) -> list[tuple[int, int]]:
    """Consecutive user ranges whose rows hold about ``max_elements`` list elements each."""
    lengths = np.diff(events.offsets)
    history_cap = settings.max_history or int(lengths.max(initial=0))
    rows = lengths if settings.train_targets == "all" else np.minimum(lengths, 3)
    cost = np.cumsum(rows * (settings.num_negatives + 1 + np.minimum(lengths, history_cap)))
    bounds = [0]
    while bounds[-1] < events.num_users:
        done = cost[bounds[-1] - 1] if bounds[-1] else 0
        bounds.append(max(int(np.searchsorted(cost, done + max_elements, side="right")), bounds[-1] + 1))
    return list(itertools.pairwise(bounds))
