"""`rrec sequences`: benchmark-exact leave-one-out sequences with sampled candidates.

The stage follows the Amazon Reviews 2023 benchmark scripts (``kcore_filtering.py`` and
``last_out_split.py`` of hyp1231/AmazonReviews2023; DESIGN.md, "Sequence rules"):

1. repeated (user, item) pairs are dropped, keeping the earliest review (ties: source order);
2. iterative k-core on users and items until stable (``k = 0`` disables it);
3. each user's items in timestamp order, equal timestamps in source order;
4. leave-one-out: last item -> ``test``, second-to-last -> ``validation``, earlier -> ``train``
   (``train_targets: last`` keeps only the item before the validation target); history = every
   earlier item, truncated to the last ``max_history`` (``0`` keeps all, as the scripts do);
5. optional seeded user sampling;
6. candidates = target + ``num_negatives`` items drawn uniformly without replacement from the
   catalog (every item of the k-core set) minus the user's whole sequence, shuffled.

Two layers. The global part (dedupe, k-core, ordering, partitioning by user) runs in the driver
on integer codes with vectorised numpy: 14M reviews are 14M small integer pairs. The per-user
part (rows, histories, candidates, metadata join) is a pure function of one partition of users,
mapped over partitions by Dask; its random draws come from a counter-based stream keyed by
(seed, user_id, target position), so the output is the same for any partitioning or cluster.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import math
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import typer
from pydantic import Field

from core.cli_common import ConfigOpt, ForceOpt, RunOpt, SchedulerOpt, WorkersOpt, settings_for, user_errors
from core.config import StageSettings
from core.schemas import CANDIDATE, HISTORY_ITEM, SEQUENCES, SPLITS, TARGET
from core.stage import RunDir, StageError
from core.tables import part_name, read_table

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

STAGE = "sequences"
# Per-user work is cut into chunks of about this many output list elements (history entries
# plus candidates), which bounds a worker's memory whatever the partition size (about 0.7 GB
# above the catalog); a chunk is one Parquet row group. Each row group repeats the dictionary
# pages of ids and titles (with candidate lists, nearly the whole catalog: at 617k items about
# 0.34 s of CPU and 7 MB of file per row group, whatever its rows), so row groups are large.
CHUNK_ELEMENTS = 48_000_000
_SPLIT_CODE = {name: code for code, name in enumerate(SPLITS)}
_TRAIN, _VALIDATION, _TEST = (_SPLIT_CODE[s] for s in ("train", "validation", "test"))

# SplitMix64 (Steele, Lea & Flood 2014): a stateless 64-bit mixer. Step j of a stream with key
# K is mix(mix(K) + (j + 1) * GAMMA), computable for millions of streams at once with numpy,
# unlike one numpy Generator object per user (tens of microseconds each).
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SHUFFLE_SALT = np.uint64(0x5F3C_1A2B_77E1_D00D)
# Draws per block of rows in `draw_negatives` (the 64-bit mixes of a block take 4 bytes each).
_DRAW_BLOCK_ELEMENTS = 2_000_000


class SequencesSettings(StageSettings):
    """Settings of `rrec sequences` (config section ``sequences``)."""

    k: int = Field(5, ge=0, description="k of the iterative k-core on users and items; 0 disables it")
    train_targets: Literal["last", "all"] = Field(
        "last", description="'last': one train row per user (the item before the validation target); 'all': one per prefix"
    )
    max_history: int = Field(50, ge=0, description="history keeps the last N items; 0 keeps the whole history")
    num_negatives: int = Field(99, ge=0, description="negatives per candidate set (plus the target)")
    sample_users: int | None = Field(None, ge=1, description="keep a seeded sample of N users after k-core")
    seed: int = 42
    events_per_partition: int | None = Field(
        None,
        ge=1,
        description="interactions per Dask partition (output layout only, never its content); default: an eighth of "
        "the interactions, at most 1,000,000",
    )


# ---------------------------------------------------------------------------------------------
# Random streams keyed by (seed, user_id, position)
# ---------------------------------------------------------------------------------------------
def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic is intended)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def user_stream_keys(seed: int, user_ids: list[str]) -> np.ndarray:
    """A 64-bit key per user from a stable hash of (seed, user_id).

    blake2b rather than Python's ``hash``, which is salted per process: the key must be the
    same on every worker and in every run.
    """
    prefix = f"{seed}\x1f".encode()
    keys = np.empty(len(user_ids), dtype=np.uint64)
    for index, user_id in enumerate(user_ids):
        digest = hashlib.blake2b(prefix + user_id.encode("utf-8"), digest_size=8).digest()
        keys[index] = int.from_bytes(digest, "little")
    return keys


def row_stream_keys(user_keys: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Key of the stream of one example: its user's key and its target's position in the sequence."""
    return _mix64(user_keys ^ _mix64(positions.astype(np.uint64) * _GAMMA + _GAMMA))


def stream_draws(keys: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` 32-bit draws of each stream: a (len(keys), count) uint32 matrix.

    Each 64-bit mix yields two draws. The key is mixed before stepping, so streams of related
    keys (k, k + GAMMA, ...) do not run along each other shifted by one step.
    """
    return _stream_mixes(keys, count).view(np.uint32)[:, :count]


def stream_codes(keys: np.ndarray, count: int, n: int) -> np.ndarray:
    """``_bounded(stream_draws(keys, count), n)`` as an int32 matrix, without the temporaries.

    Draw ``2j`` of a stream is the low half of its ``j``-th mix and draw ``2j + 1`` the high
    half (the little-endian view of :func:`stream_draws`).
    """
    mixes = _stream_mixes(keys, count)
    codes = np.empty((len(keys), count), dtype=np.int32)
    low = mixes & np.uint64(0xFFFFFFFF)
    low *= np.uint64(n)
    low >>= np.uint64(32)
    codes[:, 0::2] = low
    del low
    mixes >>= np.uint64(32)
    mixes *= np.uint64(n)
    mixes >>= np.uint64(32)
    codes[:, 1::2] = mixes[:, : count // 2]
    return codes


def _stream_mixes(keys: np.ndarray, count: int) -> np.ndarray:
    """The first ``ceil(count / 2)`` 64-bit mixes of each stream, mixed in place."""
    steps = (np.arange(1, (count + 1) // 2 + 1, dtype=np.uint64) * _GAMMA)[None, :]
    mixes = _mix64(keys)[:, None] + steps
    for shift, multiplier in ((30, _MIX1), (27, _MIX2)):
        mixes ^= mixes >> np.uint64(shift)
        mixes *= multiplier
    mixes ^= mixes >> np.uint64(31)
    return mixes


def _bounded(draws: np.ndarray, n: int) -> np.ndarray:
    """Map uniform 32-bit draws to ``0 .. n-1`` (multiply-shift; bias below n / 2**32)."""
    return ((draws.astype(np.uint64) * np.uint64(n)) >> np.uint64(32)).view(np.int64)


# ---------------------------------------------------------------------------------------------
# Global part: dedupe, k-core, ordering (driver, vectorised)
# ---------------------------------------------------------------------------------------------
@dataclass
class UserEvents:
    """Interactions grouped by user: user ``u`` owns events ``offsets[u] : offsets[u+1]``,
    in chronological order (equal timestamps in source order)."""

    user_ids: pa.Array  # string, one per user
    offsets: np.ndarray  # int64, len(user_ids) + 1, starts at 0
    item: np.ndarray  # int32 catalog code per event
    rating: np.ndarray  # float32
    timestamp: np.ndarray  # int64 (ms)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_events(self) -> int:
        return int(self.offsets[-1])

    def slice_users(self, start: int, stop: int) -> UserEvents:
        """Users ``start .. stop-1`` with their events (offsets rebased to 0)."""
        first, last = int(self.offsets[start]), int(self.offsets[stop])
        return UserEvents(
            user_ids=self.user_ids.slice(start, stop - start),
            offsets=self.offsets[start : stop + 1] - first,
            item=self.item[first:last],
            rating=self.rating[first:last],
            timestamp=self.timestamp[first:last],
        )

    def save(self, path: Path) -> None:
        """Write to ``path`` (two Arrow IPC files, uncompressed): the users with their event
        counts, and the events. No user id is repeated per event, and reading it back is a
        memory map, not a parse: the hand-off from the driver to a partition task."""
        users = pa.table({"user_id": self.user_ids, "events": pa.array(np.diff(self.offsets), pa.int64())})
        events = pa.table({"item": self.item, "rating": self.rating, "timestamp": self.timestamp})
        for suffix, table in (("users", users), ("events", events)):
            with pa.OSFile(f"{path}.{suffix}.arrow", "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)

    @classmethod
    def load(cls, path: str | Path) -> UserEvents:
        """Read what :meth:`save` wrote."""
        users, events = (pa.ipc.open_file(pa.memory_map(f"{path}.{suffix}.arrow")).read_all() for suffix in ("users", "events"))
        offsets = np.zeros(users.num_rows + 1, dtype=np.int64)
        np.cumsum(users.column("events").to_numpy(), out=offsets[1:])
        return cls(
            user_ids=users.column("user_id").combine_chunks(),
            offsets=offsets,
            item=events.column("item").to_numpy().astype(np.int32),
            rating=events.column("rating").to_numpy().astype(np.float32),
            timestamp=events.column("timestamp").to_numpy().astype(np.int64),
        )


@dataclass
class Selection:
    """The outcome of the global part: kept events by user, the catalog, and the counts."""

    events: UserEvents
    catalog_asins: pa.Array  # string, sorted; catalog code = index
    counts: dict[str, Any]
    rejects_by_reason: dict[str, int]


def read_interaction_keys(folder: Path) -> pa.Table:
    """The columns of ``interactions`` the stage needs."""
    return pads.dataset(str(folder), format="parquet").to_table(
        columns=["user_id", "parent_asin", "timestamp", "rating", "src_file", "src_line"]
    )


def _first_seen_codes(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Integer codes of a string (or dictionary) column, numbered in order of first appearance,
    and the distinct values: one hash pass (``dictionary_encode`` over all chunks shares one
    dictionary). pyarrow releases the GIL, so users and items are coded in parallel."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    encoded = pc.dictionary_encode(column)
    if encoded.num_chunks == 0:
        return np.zeros(0, dtype=np.int64), pa.array([], pa.string())
    codes = np.concatenate([chunk.indices.to_numpy(zero_copy_only=False) for chunk in encoded.chunks]).astype(np.int64)
    return codes, encoded.chunk(0).dictionary


def _sorted_order(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The positions of the values in sorted order, and the rank of each value (its inverse)."""
    by_value = pc.sort_indices(values).to_numpy()
    rank = np.empty(len(values), dtype=np.int64)
    rank[by_value] = np.arange(len(values))
    return by_value, rank


def _dense_codes(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Integer codes of a string (or dictionary) column, numbered in sorted order of the values,
    and the sorted distinct values."""
    codes, values = _first_seen_codes(column)
    by_value, rank = _sorted_order(values)
    return rank[codes], values.take(pa.array(by_value))


def first_of_pairs(user_code: np.ndarray, item_code: np.ndarray, num_items: int) -> np.ndarray:
    """Mask of the first occurrence of each (user, item) pair, for events already in
    chronological order grouped by user (so the first is the earliest review).

    Sorting by (item, position) puts the events of one pair next to each other, first one
    first, because positions are grouped by user: one sort of a packed integer key, about twice
    as fast as hashing the pairs. Falls back to hashing when the key does not fit 63 bits.
    """
    n = len(user_code)
    first = np.ones(n, dtype=bool)
    if n < 2:
        return first
    position_bits = int(n - 1).bit_length()
    if max(num_items - 1, 1).bit_length() + position_bits > 63:
        return ~pd.DataFrame({"user": user_code, "item": item_code}).duplicated(keep="first").to_numpy()
    # Sorting the packed keys themselves (not argsort) is about three times faster; the
    # position comes back out of the low bits.
    keys = np.sort((item_code.astype(np.int64) << np.int64(position_bits)) | np.arange(n, dtype=np.int64))
    by_item = keys & np.int64((1 << position_bits) - 1)
    keys >>= np.int64(position_bits)
    user_sorted = user_code[by_item]
    repeat = (keys[1:] == keys[:-1]) & (user_sorted[1:] == user_sorted[:-1])
    first[by_item[1:][repeat]] = False
    return first


def kcore_mask(users: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Which interactions survive the iterative k-core, and how many filtering rounds it took.

    Like the benchmark script, each round drops every user and every item with fewer than
    ``k`` interactions (counted on the previous round's survivors) until a round drops
    nothing. The result is the unique k-core, whatever the order of removals.
    """
    keep = np.ones(len(users), dtype=bool)
    if k <= 0 or len(users) == 0:
        return keep, 0
    # Counts are updated by what each round drops instead of recounting every survivor: after
    # the first round only a few events go, and no array is compacted.
    user_count = np.bincount(users)
    item_count = np.bincount(items)
    rounds = 0
    while True:
        drop = np.flatnonzero(keep & ((user_count < k)[users] | (item_count < k)[items]))
        if len(drop) == 0:
            return keep, rounds
        rounds += 1
        keep[drop] = False
        user_count -= np.bincount(users[drop], minlength=len(user_count))
        item_count -= np.bincount(items[drop], minlength=len(item_count))


def chronological_order(user_code: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """The stable sort order by (user, timestamp): equal keys keep their input order.

    One stable argsort of a packed (user, timestamp - min) key when both fit in 63 bits
    (always, for millisecond timestamps of a few decades and millions of users), which is
    about three times faster than a two-key lexsort.
    """
    if len(timestamp) == 0:
        return np.zeros(0, dtype=np.int64)
    earliest = int(timestamp.min())
    time_bits = (int(timestamp.max()) - earliest).bit_length()
    if int(user_code.max()).bit_length() + time_bits <= 63:
        return np.argsort((user_code.astype(np.int64) << np.int64(time_bits)) | (timestamp - earliest), kind="stable")
    return np.lexsort((timestamp, user_code))


def _ordered_first_pairs(
    rows: np.ndarray, user_code: np.ndarray, item_code: np.ndarray, timestamp: np.ndarray, num_items: int
) -> np.ndarray:
    """Positions ``rows`` (all the events of some users) in chronological order per user,
    without the later events of a repeated (user, item) pair."""
    order = rows[chronological_order(user_code[rows], timestamp[rows])]
    return order[first_of_pairs(user_code[order], item_code[order], num_items)]


def select_interactions(interactions: pa.Table, settings: SequencesSettings) -> Selection:
    """Dedupe, k-core, user sampling and chronological ordering of the ``interactions`` table.

    Every input row is either kept or counted under a reject reason: ``missing_key`` (null
    user, item or timestamp), ``duplicate_pair`` (a later review of the same user and item),
    ``kcore`` (removed by the k-core) or ``not_sampled`` (user left out by ``sample_users``).
    """
    rows_in = interactions.num_rows
    rejects: dict[str, int] = {}
    table = interactions
    if any(table[name].null_count for name in ("user_id", "parent_asin", "timestamp")):
        has_keys = pc.and_(
            pc.and_(pc.is_valid(table["user_id"]), pc.is_valid(table["parent_asin"])),
            pc.is_valid(table["timestamp"]),
        )
        table = table.filter(has_keys)
    rejects["missing_key"] = rows_in - table.num_rows

    with ThreadPoolExecutor(max_workers=2) as pool:
        # Items are coded in a second thread while this one codes users. Users are numbered in
        # order of appearance; their sorted order, which the output follows, is found while the
        # events are put in order.
        items_coded = pool.submit(_dense_codes, table["parent_asin"])
        user_code, user_values = _first_seen_codes(table["user_id"])
        user_order = pool.submit(_sorted_order, user_values)
        timestamp = table["timestamp"].to_numpy().astype(np.int64)
        rating = pc.fill_null(table["rating"], float("nan")).to_numpy().astype(np.float32)
        source_file = pc.fill_null(table["src_file"], 0).to_numpy()
        source_line = pc.fill_null(table["src_line"], 0).to_numpy()
        item_code, item_dictionary = items_coded.result()
        del table
        # Chronological per user, equal timestamps in source order (file, then line): the
        # stable sort of the benchmark script over lines read in file order. Ingest writes rows
        # in source order, so a stable sort on (user, timestamp) usually suffices.
        next_file = source_file[1:] > source_file[:-1]
        if not ((next_file | (source_file[1:] == source_file[:-1])) & (next_file | (source_line[1:] >= source_line[:-1]))).all():
            by_source = np.lexsort((source_line, source_file))
            user_code, item_code, timestamp, rating = user_code[by_source], item_code[by_source], timestamp[by_source], rating[by_source]
        del source_file, source_line, next_file
        # Repeated (user, item): keep the first in that order, i.e. the earliest review. A pair
        # never spans two users, so each half of the users is ordered and deduped on its own,
        # the two halves in parallel.
        in_first_half = user_code < (len(user_values) + 1) // 2
        second_half = pool.submit(
            _ordered_first_pairs, np.flatnonzero(~in_first_half), user_code, item_code, timestamp, len(item_dictionary)
        )
        order = np.concatenate(
            [
                _ordered_first_pairs(np.flatnonzero(in_first_half), user_code, item_code, timestamp, len(item_dictionary)),
                second_half.result(),
            ]
        )
        del in_first_half
        rank = user_order.result()[1]
    rejects["duplicate_pair"] = int(len(user_code) - len(order))
    user_code, item_code = user_code[order], item_code[order]

    counts: dict[str, Any] = {
        "users_before_kcore": int(np.count_nonzero(np.bincount(user_code))),
        "items_before_kcore": int(np.count_nonzero(np.bincount(item_code))),
    }
    keep, rounds = kcore_mask(user_code, item_code, settings.k)
    rejects["kcore"] = int(len(keep) - keep.sum())
    order, user_code, item_code = order[keep], user_code[keep], item_code[keep]
    item_present = np.bincount(item_code, minlength=len(item_dictionary)) > 0
    kept_users = np.flatnonzero(np.bincount(user_code, minlength=len(user_values)))
    catalog_items = np.flatnonzero(item_present)
    counts.update(
        kcore_rounds=rounds,
        users_after_kcore=len(kept_users),
        items_after_kcore=len(catalog_items),
        catalog_items=len(catalog_items),
    )

    if settings.sample_users is not None and settings.sample_users < len(kept_users):
        keys = user_stream_keys(settings.seed, user_values.take(pa.array(kept_users)).to_pylist())
        # The N users with the smallest keys: a uniform sample that grows by adding users as
        # N grows, and that does not depend on the order of the input.
        chosen = np.zeros(len(user_values), dtype=bool)
        chosen[kept_users[np.lexsort((rank[kept_users], keys))[: settings.sample_users]]] = True
        sampled = chosen[user_code]
        rejects["not_sampled"] = int(len(sampled) - sampled.sum())
        order, user_code, item_code = order[sampled], user_code[sampled], item_code[sampled]
    else:
        rejects["not_sampled"] = 0

    # Catalog codes: rank among the k-core items in parent_asin order (item codes are sorted).
    catalog_code = np.cumsum(item_present, dtype=np.int64).astype(np.int32) - 1
    # Each user's events are one run; the runs go in user_id order.
    starts = np.flatnonzero(np.diff(user_code, prepend=-1)) if len(user_code) else np.zeros(0, dtype=np.int64)
    run_users = user_code[starts]
    by_user_id = np.argsort(rank[run_users])
    lengths = np.diff(np.append(starts, len(user_code)))[by_user_id]
    run_starts = starts[by_user_id]
    in_user_order, _ = _ranges(run_starts, run_starts + lengths)
    order = order[in_user_order]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    events = UserEvents(
        user_ids=user_values.take(pa.array(run_users[by_user_id])),
        offsets=offsets,
        item=catalog_code[item_code[in_user_order]],
        rating=rating[order],
        timestamp=timestamp[order],
    )
    counts.update(users_out=events.num_users, interactions_out=events.num_events)
    return Selection(
        events=events,
        catalog_asins=item_dictionary.take(pa.array(catalog_items)),
        counts=counts,
        rejects_by_reason=rejects,
    )


# ---------------------------------------------------------------------------------------------
# Per-partition part: rows, histories, candidates (pure functions of one partition of users)
# ---------------------------------------------------------------------------------------------
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
    target_index = _bounded((_mix64(row_keys ^ _SHUFFLE_SALT) >> np.uint64(32)).astype(np.uint32), n_negatives + 1)
    column = np.arange(n_negatives + 1)[None, :]
    before = column < target_index[:, None]
    # Negatives before the target keep their column, those after it move one to the right.
    candidates = np.empty((n_rows, n_negatives + 1), dtype=np.int32)
    candidates[:, 1:] = negatives
    candidates[:, :-1][before[:, :-1]] = negatives[before[:, :-1]]
    candidates[column == target_index[:, None]] = targets
    return candidates, target_index.astype(np.int32)


def _ranges(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ``arange(start, stop)`` of every row, and the int32 list offsets."""
    lengths = stops - starts
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.arange(offsets[-1], dtype=np.int64) + np.repeat(starts - offsets[:-1], lengths)
    return flat, offsets.astype(np.int32)


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
    history_events, history_offsets = _ranges(history_start, target_event)

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


@functools.lru_cache(maxsize=2)
def _load_catalog(catalog_path: str) -> Catalog:
    # Once per worker process and stage run (the path is unique to the run), not per task.
    return Catalog.from_table(pq.read_table(catalog_path))


def build_partition(events_path: str, catalog_path: str, out_path: str, settings: SequencesSettings) -> dict[str, int]:
    """Dask task: read one partition of events, write its ``sequences`` part, return row counts."""
    events = UserEvents.load(events_path)
    catalog = _load_catalog(catalog_path)
    rows_by_split = dict.fromkeys(SPLITS, 0)
    # store_schema=False and non-compliant list names: the file's own Parquet types (string,
    # list<item: ...>) are exactly SEQUENCES, so the dictionary encoding stays an encoding.
    # Dictionary pages may hold a whole catalog (the default 1 MiB limit would fall back to
    # hashing plain strings). Statistics only where a reader filters: string min/max over 100
    # candidates a row would cost more than writing them.
    with pq.ParquetWriter(
        out_path,
        ENCODED_SEQUENCES,
        compression="zstd",
        write_statistics=["user_id", "split", "target_index"],
        store_schema=False,
        use_compliant_nested_type=False,
        dictionary_pagesize_limit=1 << 30,
    ) as writer:
        for start, stop in user_chunks(events, settings):
            rows = build_sequence_rows(events.slice_users(start, stop), catalog, settings)
            writer.write_table(rows)
            split_counts = pc.value_counts(rows["split"]).to_pylist()
            for entry in split_counts:
                rows_by_split[entry["values"]] += entry["counts"]
        if events.num_users == 0:
            writer.write_table(ENCODED_SEQUENCES.empty_table())
    return rows_by_split


def warm_up() -> None:
    """Dask task that does nothing: unpickling it imports this module (and numpy, pandas,
    pyarrow.parquet) on a worker while the driver still selects, not when partitions are due."""


MAX_DEFAULT_PARTITION = 1_000_000
MIN_DEFAULT_PARTITIONS = 8


def default_partition_size(num_events: int) -> int:
    """Interactions per partition when none is set: large partitions write fewer copies of the
    catalog's dictionary pages (one per row group, see :data:`CHUNK_ELEMENTS`), and at least
    eight of them keep the workers of a small cluster busy on mid-sized data."""
    return max(1, min(MAX_DEFAULT_PARTITION, math.ceil(num_events / MIN_DEFAULT_PARTITIONS)))


def partition_bounds(events: UserEvents, events_per_partition: int) -> list[tuple[int, int]]:
    """User ranges of about ``events_per_partition`` interactions each (never splitting a user)."""
    if events.num_users == 0:
        return [(0, 0)]
    targets = np.arange(events_per_partition, events.num_events, events_per_partition)
    cuts = np.unique(np.searchsorted(events.offsets, targets, side="left"))
    cuts = cuts[(cuts > 0) & (cuts < events.num_users)]
    bounds = [0, *cuts.tolist(), events.num_users]
    return list(itertools.pairwise(bounds))


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------
def sequences_up_to_date(run: Path, settings: SequencesSettings) -> bool:
    """Whether the recorded ``sequences`` stage matches the current ingest outputs and settings."""
    run_dir = RunDir(run)
    config = settings.model_dump()
    return run_dir.is_current(STAGE, run_dir.fingerprint(STAGE, config=config, inputs=run_dir.upstream_hashes("ingest")))


def run_sequences(run: Path, settings: SequencesSettings, client: Client, force: bool = False) -> dict[str, Any]:
    """Build the ``sequences`` table of a run folder from its ``interactions`` and ``items``.

    Requires a completed ``ingest`` stage. Skips (returning the recorded manifest entry) when
    the ingest outputs and the settings are unchanged, unless ``force``. Returns the manifest
    entry: rows in/out, rows per split, users and items before and after the k-core, and
    rejects by reason, which together account for every interaction.
    """
    from core.progress import gather_with_progress

    run_dir = RunDir(run)
    inputs = run_dir.upstream_hashes("ingest")
    config = settings.model_dump()
    fingerprint = run_dir.fingerprint(STAGE, config=config, inputs=inputs)
    if not force and run_dir.is_current(STAGE, fingerprint):
        log.info("sequences of %s are up to date (use --force to rebuild)", run_dir.path)
        return run_dir.entry(STAGE)
    log.info("building sequences of %s", run_dir.path)

    with run_dir.stage(STAGE, fingerprint, config=config, inputs=inputs) as out:
        warming = [client.submit(warm_up, pure=False, workers=[address]) for address in client.scheduler_info()["workers"]]
        with ThreadPoolExecutor(max_workers=1) as pool:
            # The item metadata is read while the interactions are selected.
            items_read = pool.submit(read_table, run_dir.table("items"), "items", columns=["parent_asin", "title", "categories", "store"])
            interactions = read_interaction_keys(run_dir.table("interactions"))
            rows_in = interactions.num_rows
            selection = select_interactions(interactions, settings)
            del interactions
            items = items_read.result()
        log.info(
            "%d interactions -> %d after dedupe and %d-core (%d rounds): %d users, %d items",
            rows_in,
            selection.counts["interactions_out"],
            settings.k,
            selection.counts["kcore_rounds"],
            selection.counts["users_out"],
            selection.counts["catalog_items"],
        )
        events = selection.events
        if events.num_users == 0:
            log.warning("no interaction survives dedupe and the %d-core: the sequences table is empty (lower --k?)", settings.k)
        check_catalog_size(len(selection.catalog_asins), int(np.diff(events.offsets).max(initial=0)), settings.num_negatives)
        catalog = Catalog.from_items(selection.catalog_asins, items)
        del items

        # Inputs of the partition tasks go to files beside the output: on a multi-machine
        # cluster the run folder is the shared file system, and a task holds one partition.
        scratch = out.tmp_dir / "scratch"
        scratch.mkdir()
        catalog_path = scratch / "catalog.parquet"
        pq.write_table(catalog.to_table(), catalog_path)
        table_dir = out.table_dir(STAGE)
        futures = []
        per_partition = settings.events_per_partition or default_partition_size(events.num_events)
        for index, (start, stop) in enumerate(partition_bounds(events, per_partition)):
            events_path = scratch / f"events-{index:05d}"
            events.slice_users(start, stop).save(events_path)
            # Submitted as soon as its input is written: workers start while the rest is written.
            futures.append(
                client.submit(build_partition, str(events_path), str(catalog_path), str(table_dir / part_name(index)), settings, pure=False)
            )
        counts, rejects = selection.counts, selection.rejects_by_reason
        del selection, events
        results = gather_with_progress(futures, "sequences")
        del warming
        shutil.rmtree(scratch)

        rows_by_split = {split: sum(result[split] for result in results) for split in SPLITS}
        out.record(
            rows_in=rows_in,
            rows_out={STAGE: sum(rows_by_split.values())},
            rejects_by_reason=rejects,
            rows_by_split=rows_by_split,
            partitions=len(futures),
            items_without_metadata=catalog.without_metadata,
            **counts,
        )
    return run_dir.entry(STAGE)


def register(app: typer.Typer) -> None:
    """Add ``rrec sequences`` to the ``rrec`` app."""

    @app.command(STAGE)
    @user_errors
    def sequences_command(
        run: RunOpt,
        k: Annotated[int | None, typer.Option("--k", help="k-core on users and items (default 5); 0 disables it.", min=0)] = None,
        train_targets: Annotated[
            str | None,
            typer.Option("--train-targets", help="'last' (default): one train row per user; 'all': one per prefix."),
        ] = None,
        max_history: Annotated[
            int | None, typer.Option("--max-history", help="History keeps the last N items (default 50); 0 keeps all.", min=0)
        ] = None,
        num_negatives: Annotated[
            int | None, typer.Option("--num-negatives", help="Negatives per candidate set (default 99).", min=0)
        ] = None,
        sample_users: Annotated[
            int | None, typer.Option("--sample-users", help="Keep a seeded sample of N users after the k-core.", min=1)
        ] = None,
        seed: Annotated[int | None, typer.Option("--seed", help="Seed of user sampling and negatives (default 42).")] = None,
        events_per_partition: Annotated[
            int | None,
            typer.Option(
                "--events-per-partition",
                help="Interactions per Dask partition (layout only; default: an eighth of them, at most 1,000,000).",
                min=1,
            ),
        ] = None,
        config: ConfigOpt = None,
        workers: WorkersOpt = None,
        scheduler: SchedulerOpt = None,
        force: ForceOpt = False,
    ) -> None:
        """Build leave-one-out sequences (benchmark-exact dedupe, k-core and splits) with candidates.

        Reads the `interactions` and `items` tables of the run folder (run `rrec ingest` first) and writes the `sequences` table: one row per (user, split, target) with the history, the target and its shuffled candidate set. Options override the `sequences` section of the config file.
        """
        from pipeline.cluster import dask_client

        settings, common = settings_for(
            config,
            STAGE,
            SequencesSettings,
            k=k,
            train_targets=train_targets,
            max_history=max_history,
            num_negatives=num_negatives,
            sample_users=sample_users,
            seed=seed,
            events_per_partition=events_per_partition,
            workers=workers,
            scheduler=scheduler,
        )
        run_dir = RunDir(run)
        run_dir.require("ingest", hint=f"rrec ingest --run {run} --reviews FILE...")
        # Decided before starting a cluster, so an unchanged rerun returns at once.
        skip = not force and sequences_up_to_date(run, settings)
        if skip:
            entry = run_dir.entry(STAGE)
        else:
            with dask_client(common.workers, common.scheduler) as client:
                entry = run_sequences(run, settings, client, force=force)
        split_rows = ", ".join(f"{split} {count:,}" for split, count in entry["rows_by_split"].items())
        status = " (up to date, not rebuilt; --force rebuilds)" if skip else ""
        typer.echo(
            f"sequences{status}: {entry['rows_out'][STAGE]:,} rows ({split_rows}) from {entry['users_out']:,} users and "
            f"{entry['catalog_items']:,} items -> {run_dir.table(STAGE)}"
        )
