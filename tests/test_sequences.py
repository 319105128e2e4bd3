"""`rrec sequences`: the per-partition functions without Dask, then the stage through Dask."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute
import pyarrow.dataset as pads
import pytest
from sequences_fixtures import DAY_MS, START_MS, ingest_by_hand, meta, review, tricky_reviews, write_jsonl

from core.schemas import INTERACTIONS, SEQUENCES
from core.stage import StageError
from pipeline.sequences import (
    Catalog,
    DistinctStrings,
    SequencesSettings,
    UserEvents,
    bounded,
    build_sequence_rows,
    check_catalog_size,
    chronological_order,
    default_partition_size,
    draw_negatives,
    example_positions,
    first_of_pairs,
    kcore_mask,
    partition_bounds,
    run_sequences,
    select_interactions,
    stream_codes,
    stream_draws,
    user_chunks,
    user_stream_keys,
)

RRECT = Path(sys.executable).with_name("rrec")


def interactions_table(rows: list[tuple[str, str, int, int, int]]) -> pa.Table:
    """(user, item, timestamp, src_file, src_line) rows as an `interactions` table."""
    return pa.table(
        {
            "user_id": [r[0] for r in rows],
            "parent_asin": [r[1] for r in rows],
            "asin": [r[1] for r in rows],
            "rating": [float(r[3] % 5 + 1) for r in rows],
            "timestamp": [r[2] for r in rows],
            "review_title": [""] * len(rows),
            "review_text": [""] * len(rows),
            "helpful_vote": [0] * len(rows),
            "verified_purchase": [True] * len(rows),
            "src_file": [r[3] for r in rows],
            "src_line": [r[4] for r in rows],
        },
        schema=INTERACTIONS,
    )


def sequence_of(selection, user: str) -> list[str]:
    events = selection.events
    index = events.user_ids.to_pylist().index(user)
    codes = events.item[events.offsets[index] : events.offsets[index + 1]]
    return selection.catalog_asins.take(pa.array(codes)).to_pylist()


def canonical(table: pa.Table) -> list[str]:
    """Rows as sorted JSON strings: equality of content whatever the row or file order."""
    return sorted(json.dumps(row, sort_keys=True) for row in table.to_pylist())


def read_sequences(run: Path) -> pa.Table:
    return pads.dataset(str(run / "sequences")).to_table()


# -- global part: dedupe, order, k-core, sampling ----------------------------------------------
def test_dedupe_keeps_earliest_review_and_ties_keep_source_order_across_files():
    rows = [
        ("u", "b", 2000, 0, 5),  # tie with "a" below: file 0 comes first
        ("u", "c", 1000, 1, 1),
        ("u", "a", 2000, 1, 2),
        ("u", "c", 3000, 0, 1),  # a later review of c: dropped
        ("u", "d", 2000, 0, 9),  # tie, later line of file 0 than b: after b, before a
        ("u", "a", 2000, 1, 7),  # same timestamp as the kept review of a, later source: dropped
    ]
    selection = select_interactions(interactions_table(rows), SequencesSettings(k=0))
    assert sequence_of(selection, "u") == ["c", "b", "d", "a"]
    assert selection.rejects_by_reason["duplicate_pair"] == 2
    kept_c = selection.events.timestamp[0]
    assert kept_c == 1000


@pytest.mark.parametrize("layout", ["grouped by user", "interleaved"])
def test_users_come_out_in_user_id_order_whatever_order_they_appear_in(layout):
    # Users are numbered as they appear and ordered and deduped in two halves in parallel; the
    # result must be the same as for the same reviews listed user by user in user_id order.
    rng = np.random.default_rng(5)
    names = [f"user{n:03d}" for n in rng.permutation(60)]
    reviews = [(name, f"i{rng.integers(0, 12)}", int(rng.integers(0, 5)) * 1000) for name in names for _ in range(rng.integers(1, 9))]
    if layout == "interleaved":
        reviews = [reviews[i] for i in rng.permutation(len(reviews))]
    rows = [(user, item, time, 0, line) for line, (user, item, time) in enumerate(reviews, start=1)]
    selection = select_interactions(interactions_table(rows), SequencesSettings(k=0))

    users = selection.events.user_ids.to_pylist()
    assert users == sorted(set(names))
    for user in users:  # each user's reviews in time order, ties in line order, first of each item kept
        mine = sorted((time, line, item) for (who, item, time, _, line) in rows if who == user)
        expected = list(dict.fromkeys(item for _, _, item in mine))
        assert sequence_of(selection, user) == expected
    assert selection.rejects_by_reason["duplicate_pair"] == len(rows) - selection.counts["interactions_out"]


def test_default_partitions_number_at_least_eight_and_hold_at_most_400k_interactions():
    # Few large partitions write few copies of the catalog's dictionary pages; at least eight
    # keep a small cluster's workers busy on mid-sized data (one partition would use one worker).
    def partitions(num_users: int, events_each: int) -> int:
        offsets = np.arange(num_users + 1, dtype=np.int64) * events_each
        events = UserEvents(
            pa.array([f"u{i}" for i in range(num_users)]),
            offsets,
            np.zeros(offsets[-1], np.int32),
            np.zeros(offsets[-1], np.float32),
            np.zeros(offsets[-1], np.int64),
        )
        return len(partition_bounds(events, default_partition_size(events.num_events)))

    assert partitions(80_000, 11) == 8  # 880k interactions: 8 partitions, not 1
    assert partitions(1_200_000, 10) == 30  # 12M: 400k each (a later stage holds one part a worker)
    assert partitions(3, 1) == 3  # never an empty partition, never a split user
    assert default_partition_size(0) == 1


def test_rows_without_user_item_or_timestamp_are_counted_rejects():
    table = interactions_table([("u", "a", 1, 0, 1), ("u", "b", 2, 0, 2), ("v", "a", 3, 0, 3)])
    table = table.set_column(0, "user_id", pa.array(["u", None, "v"]))
    selection = select_interactions(table, SequencesSettings(k=0))
    assert selection.rejects_by_reason["missing_key"] == 1
    assert selection.counts["interactions_out"] == 2


def test_kcore_cascade_takes_several_rounds_and_leaves_every_degree_at_least_k():
    from benchmarks.official_baseline import filter_inters

    records = tricky_reviews(seed=3, users=80, items=30)
    pairs = list(dict.fromkeys((r["user_id"], r["parent_asin"]) for r in records))
    _user_names, users = np.unique([p[0] for p in pairs], return_inverse=True)
    _item_names, items = np.unique([p[1] for p in pairs], return_inverse=True)
    keep, rounds = kcore_mask(users, items, 5)
    assert rounds >= 6  # the C/X cascade falls one round after another
    assert np.bincount(users[keep])[np.unique(users[keep])].min() >= 5
    assert np.bincount(items[keep])[np.unique(items[keep])].min() >= 5
    official = filter_inters([(user, item, 0.0, 0) for user, item in pairs], 5)
    assert {pairs[i] for i in np.flatnonzero(keep)} == {(user, item) for user, item, _, _ in official}
    assert kcore_mask(users, items, 0)[0].all()  # k = 0 disables the filter


def test_sample_users_is_seeded_nested_and_counted():
    rows = [(f"u{u}", f"i{i}", i, 0, u * 10 + i) for u in range(40) for i in range(6)]
    table = interactions_table(rows)

    def sampled(n: int, seed: int = 42) -> set[str]:
        selection = select_interactions(table, SequencesSettings(k=5, sample_users=n, seed=seed))
        assert selection.rejects_by_reason["not_sampled"] == (40 - n) * 6
        return set(selection.events.user_ids.to_pylist())

    small, large = sampled(10), sampled(25)
    assert len(small) == 10 and len(large) == 25
    assert small < large
    assert sampled(10) == small
    assert sampled(10, seed=7) != small


def test_chronological_order_is_stable_with_packed_keys_and_with_the_lexsort_fallback():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 50, 2000)
    for timestamps in (START_MS + rng.integers(0, 5, 2000) * DAY_MS, rng.integers(-(2**62), 2**62, 2000) // 3 * 3):
        order = chronological_order(users, timestamps)
        assert order.tolist() == np.lexsort((timestamps, users)).tolist()  # lexsort is stable


def test_pair_dedupe_keeps_each_first_occurrence_with_the_sort_and_with_the_hash_fallback():
    rng = np.random.default_rng(1)
    users = np.sort(rng.integers(0, 300, 5000))  # grouped by user, as the stage passes them
    items = rng.integers(0, 40, 5000)
    seen: set[tuple[int, int]] = set()
    expected = []
    for pair in zip(users.tolist(), items.tolist()):
        expected.append(pair not in seen)
        seen.add(pair)
    assert first_of_pairs(users, items, 40).tolist() == expected
    # An item count too large to pack next to the positions takes the hashing path.
    assert first_of_pairs(users, items, 2**62).tolist() == expected


# -- per-partition part ------------------------------------------------------------------------


def test_stream_codes_equal_the_bounded_draws_bit_for_bit():
    # The fast form must not move a single candidate of an existing release.
    keys = np.random.default_rng(2).integers(0, 2**63, 500).astype(np.uint64)
    for count, n in ((1, 7), (103, 617_087), (104, 2**31 - 1), (37, 1)):
        codes = stream_codes(keys, count, n)
        assert codes.dtype == np.int32 and codes.shape == (500, count)
        assert np.array_equal(codes, bounded(stream_draws(keys, count), n))


def test_distinct_strings_give_the_same_values_whether_the_dictionary_is_trimmed_or_whole():
    titles = pa.array(["b", None, "a", "b", "c", None, "a"])
    strings = DistinctStrings.of(titles)
    sparse = np.array([0, 1, 3, 1])  # few items: the dictionary keeps only the values used
    dense = np.random.default_rng(3).integers(0, len(titles), 200)  # many: the whole dictionary
    for items in (sparse, dense):
        assert strings.take(items).cast(pa.string()).to_pylist() == titles.take(pa.array(items)).to_pylist()
    asins = DistinctStrings.of(pa.array(["A", "B", "C"]))
    assert asins.identity and asins.take(np.array([2, 0, 2])).cast(pa.string()).to_pylist() == ["C", "A", "C"]


def test_events_saved_for_a_task_load_back_unchanged(tmp_path):
    events = events_of({"u1": [3, 1, 2], "u2": [5], "u3": [0, 4]})
    events.save(tmp_path / "events-00000")
    loaded = UserEvents.load(tmp_path / "events-00000")
    assert loaded.user_ids.to_pylist() == events.user_ids.to_pylist()
    for name in ("offsets", "item", "rating", "timestamp"):
        assert np.array_equal(getattr(loaded, name), getattr(events, name)), name


def events_of(sequences: dict[str, list[int]]) -> UserEvents:
    users = sorted(sequences)
    lengths = [len(sequences[u]) for u in users]
    items = [code for u in users for code in sequences[u]]
    return UserEvents(
        user_ids=pa.array(users),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        item=np.array(items, dtype=np.int32),
        rating=np.full(len(items), 4.0, dtype=np.float32),
        timestamp=np.arange(len(items), dtype=np.int64) * 1000,
    )


def catalog_of(size: int, with_meta: set[int]) -> Catalog:
    asins = [f"B{index:04d}" for index in range(size)]
    return Catalog(
        parent_asin=pa.array(asins),
        title=pa.array([f"Title {index}" if index in with_meta else None for index in range(size)], pa.string()),
        categories=pa.array([["Cat", str(index)] if index in with_meta else None for index in range(size)], pa.list_(pa.string())),
        store=pa.array([f"Store {index}" if index in with_meta else None for index in range(size)], pa.string()),
    )


def test_example_positions_last_and_all():
    events = events_of({"a": [0, 1, 2, 3, 4, 5], "b": [1, 2], "c": [3]})
    user, position, split = example_positions(events, "last")
    assert list(zip(user.tolist(), position.tolist(), split.tolist())) == [(0, 3, 0), (0, 4, 1), (0, 5, 2), (1, 0, 1), (1, 1, 2), (2, 0, 2)]
    user, position, split = example_positions(events, "all")
    assert position.tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 0]
    assert split.tolist() == [0, 0, 0, 0, 1, 2, 1, 2, 2]


def test_rows_truncate_history_and_join_metadata_with_nulls_for_items_without_it():
    events = events_of({"a": [0, 1, 2, 3, 4, 5, 6, 7]})
    catalog = catalog_of(200, with_meta={0, 5, 7})
    rows = build_sequence_rows(events, catalog, SequencesSettings(k=0, max_history=3, num_negatives=9, train_targets="all"))
    rows = rows.cast(SEQUENCES)
    by_target = {row["target"]["parent_asin"]: row for row in rows.to_pylist()}
    test_row = by_target["B0007"]
    assert test_row["split"] == "test"
    assert [h["parent_asin"] for h in test_row["history"]] == ["B0004", "B0005", "B0006"]
    assert [h["title"] for h in test_row["history"]] == [None, "Title 5", None]
    assert test_row["target"] == {
        "parent_asin": "B0007",
        "title": "Title 7",
        "categories": ["Cat", "7"],
        "store": "Store 7",
        "rating": 4.0,
        "timestamp": 7000,
    }
    assert by_target["B0006"]["split"] == "validation"
    assert by_target["B0006"]["target"]["title"] is None and by_target["B0006"]["target"]["store"] is None
    assert by_target["B0000"]["history"] == [] and by_target["B0000"]["split"] == "train"
    assert [h["parent_asin"] for h in by_target["B0002"]["history"]] == ["B0000", "B0001"]


def test_candidates_hold_target_at_target_index_and_distinct_negatives_outside_the_sequence():
    sequences = {f"u{u}": [(u * 7 + j * 3) % 150 for j in range(5 + u % 9)] for u in range(120)}
    sequences = {u: list(dict.fromkeys(items)) for u, items in sequences.items()}
    events = events_of(sequences)
    rows = build_sequence_rows(events, catalog_of(150, set()), SequencesSettings(k=0, num_negatives=30, train_targets="all")).to_pylist()
    assert len(rows) == events.num_events
    for row in rows:
        candidates = [c["parent_asin"] for c in row["candidates"]]
        assert len(candidates) == 31 and len(set(candidates)) == 31
        assert candidates[row["target_index"]] == row["target"]["parent_asin"]
        own = {f"B{code:04d}" for code in sequences[row["user_id"]]}
        assert not (set(candidates) - {row["target"]["parent_asin"]}) & own


def test_negatives_are_uniform_over_the_allowed_items_and_target_positions_uniform():
    # 2,000 rows of one user with a 10-item sequence over a 60-item catalog.
    events = events_of({"u": list(range(10))})
    keys = np.arange(2000, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    negatives = draw_negatives(keys, np.zeros(2000, dtype=np.int64), events, 60, 20)
    counts = Counter(negatives.ravel().tolist())
    assert set(counts) == set(range(10, 60))
    expected = 2000 * 20 / 50
    assert max(abs(c - expected) for c in counts.values()) < 0.15 * expected
    positions = build_sequence_rows(
        events_of({f"u{u}": list(range(10)) for u in range(300)}), catalog_of(60, set()), SequencesSettings(k=0, num_negatives=9)
    )["target_index"].to_numpy()
    assert Counter(positions.tolist()).keys() == set(range(10))
    assert max(Counter(positions.tolist()).values()) < 2.0 * len(positions) / 10


def test_negatives_when_the_catalog_has_exactly_enough_items():
    events = events_of({"u": [0, 1, 2, 3, 4]})
    negatives = draw_negatives(np.array([1, 2, 3], dtype=np.uint64), np.zeros(3, dtype=np.int64), events, 25, 20)
    assert all(sorted(row) == list(range(5, 25)) for row in negatives.tolist())
    assert len({tuple(row) for row in negatives.tolist()}) == 3  # different orders per row


def test_a_catalog_too_small_for_num_negatives_is_a_clear_error():
    with pytest.raises(StageError, match="lower --num-negatives to at most 15"):
        check_catalog_size(catalog_size=20, longest_sequence=5, num_negatives=16)
    check_catalog_size(catalog_size=20, longest_sequence=5, num_negatives=15)


def test_candidates_do_not_depend_on_how_users_are_chunked():
    sequences = {f"user{u:03d}": [(u * 11 + j * 5) % 90 for j in range(3 + u % 12)] for u in range(70)}
    sequences = {u: list(dict.fromkeys(items)) for u, items in sequences.items()}
    events, catalog = events_of(sequences), catalog_of(90, {1, 2, 3})
    settings = SequencesSettings(k=0, num_negatives=40, train_targets="all", max_history=4)
    whole = build_sequence_rows(events, catalog, settings).cast(SEQUENCES)
    chunks = user_chunks(events, settings, max_elements=500)
    assert len(chunks) > 5
    pieces = pa.concat_tables(build_sequence_rows(events.slice_users(a, b), catalog, settings).cast(SEQUENCES) for a, b in chunks)
    assert pieces.equals(whole)


def test_user_stream_keys_are_stable_across_processes():
    script = "from pipeline.sequences import user_stream_keys; print(user_stream_keys(42, ['AFV22L7AEKI2LW6HMLRLUKNYVBGQ']).tolist())"
    other_process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip()
    assert other_process == str(user_stream_keys(42, ["AFV22L7AEKI2LW6HMLRLUKNYVBGQ"]).tolist())


# -- the stage through Dask --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tricky_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tricky")
    records = tricky_reviews(seed=11, users=150, items=90)
    reviews = write_jsonl(root / "raw" / "Tricky.jsonl", records)
    items = sorted({r["parent_asin"] for r in records})
    metas = write_jsonl(root / "raw" / "meta_Tricky.jsonl", (meta(item, f"Snack {item}") for item in items[::2]))
    run = root / "run"
    ingest_by_hand(run, [reviews], [metas])
    return run


def test_stage_accounts_for_every_interaction_and_reports_counts(tricky_run, dask_client):
    entry = run_sequences(tricky_run, SequencesSettings(num_negatives=20, events_per_partition=400), dask_client)
    rejected = sum(entry["rejects_by_reason"].values())
    assert entry["rows_in"] == entry["interactions_out"] + rejected
    assert entry["rejects_by_reason"]["duplicate_pair"] > 0 and entry["rejects_by_reason"]["kcore"] > 0
    assert entry["kcore_rounds"] >= 6
    assert entry["users_before_kcore"] > entry["users_after_kcore"] == entry["users_out"]
    assert entry["items_before_kcore"] > entry["items_after_kcore"] == entry["catalog_items"]
    assert entry["partitions"] > 1
    table = read_sequences(tricky_run)
    assert table.schema == SEQUENCES
    assert entry["rows_by_split"] == {split: int(count) for split, count in Counter(table["split"].to_pylist()).items()}
    assert entry["rows_by_split"]["train"] == entry["rows_by_split"]["test"] == entry["users_out"]  # train_targets=last
    # Items without metadata keep their id and get a null title; those with it get theirs.
    targets = table["target"].to_pylist()
    assert any(t["title"] is None for t in targets) and any(t["title"] == f"Snack {t['parent_asin']}" for t in targets)
    with_meta = set(pads.dataset(str(tricky_run / "items")).to_table()["parent_asin"].to_pylist())
    catalog = {
        entry["parent_asin"]
        for row in table.filter(pa.compute.equal(table["split"], "test")).to_pylist()
        for entry in [*row["history"], row["target"]]
    }
    assert len(catalog) == entry["catalog_items"]
    assert entry["items_without_metadata"] == len(catalog - with_meta) > 0


def test_output_is_the_same_for_any_partitioning_and_reruns_skip(tricky_run, dask_client, tmp_path):
    settings = SequencesSettings(num_negatives=20, train_targets="all", events_per_partition=10_000_000)
    single = run_sequences(tricky_run, settings, dask_client)
    assert single["partitions"] == 1
    one_part = read_sequences(tricky_run)
    many = run_sequences(tricky_run, settings.model_copy(update={"events_per_partition": 97}), dask_client)
    assert many["partitions"] > 5
    assert canonical(read_sequences(tricky_run)) == canonical(one_part)
    again = run_sequences(tricky_run, settings.model_copy(update={"events_per_partition": 97}), dask_client)
    assert again["finished_at"] == many["finished_at"]  # skipped: unchanged inputs and settings
    forced = run_sequences(tricky_run, settings.model_copy(update={"events_per_partition": 97}), dask_client, force=True)
    assert forced["outputs"] == many["outputs"]  # rebuilt, byte-identical


def test_requires_ingest_first(tmp_path, dask_client):
    with pytest.raises(StageError, match="rrec ingest"):
        run_sequences(tmp_path / "empty-run", SequencesSettings(), dask_client)


def test_k_that_removes_everything_writes_an_empty_table(tricky_run, dask_client):
    entry = run_sequences(tricky_run, SequencesSettings(k=10_000), dask_client)
    assert entry["rows_out"]["sequences"] == 0
    assert entry["rejects_by_reason"]["kcore"] == entry["rows_in"] - entry["rejects_by_reason"]["duplicate_pair"]
    assert read_sequences(tricky_run).num_rows == 0


def test_real_sample_through_ingest_and_sequences_matches_the_official_scripts(real_reviews, tmp_path, dask_client):
    from benchmarks.official_baseline import run_official_baseline
    from pipeline.ingest import IngestSettings, run_ingest

    run = tmp_path / "run"
    run_ingest(run, IngestSettings(reviews=[str(real_reviews)]), dask_client)
    # The sample is sparse: nothing survives a 5-core, 38 interactions a 2-core.
    for k, expected_rows in ((5, 0), (2, 38), (0, 2395)):
        entry = run_sequences(run, SequencesSettings(k=k, train_targets="all", max_history=0, num_negatives=9), dask_client)
        assert entry["rows_in"] == 2403
        official = run_official_baseline([real_reviews], k=k)
        table = read_sequences(run)
        ours = sorted(
            (r["split"], r["user_id"], r["target"]["parent_asin"], r["target"]["timestamp"], tuple(h["parent_asin"] for h in r["history"]))
            for r in table.to_pylist()
        )
        theirs = sorted(
            (split, e.user_id, e.parent_asin, e.timestamp, e.history)
            for split, examples in (("train", official.train), ("validation", official.validation), ("test", official.test))
            for e in examples
        )
        assert ours == theirs
        assert len(ours) == expected_rows == entry["interactions_out"]  # train_targets=all: one row per interaction
        assert all(r["title"] is None for r in table["target"].to_pylist())  # the sample has no metadata


def test_cli_help_and_bad_settings_are_one_line_errors(tricky_run):
    result = subprocess.run([str(RRECT), "sequences", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for option in (
        "--k",
        "--train-targets",
        "--max-history",
        "--num-negatives",
        "--sample-users",
        "--seed",
        "--workers",
        "--scheduler",
        "--force",
        "--config",
    ):
        assert option in result.stdout
    bad = subprocess.run([str(RRECT), "sequences", "--run", str(tricky_run), "--train-targets", "some"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "train_targets" in bad.stderr and "Traceback" not in bad.stderr
    missing = subprocess.run([str(RRECT), "sequences", "--run", str(tricky_run.parent / "nowhere")], capture_output=True, text=True)
    assert missing.returncode == 2 and "rrec ingest" in missing.stderr and "Traceback" not in missing.stderr


def test_a_catalog_too_small_stops_the_stage_before_writing(tmp_path, dask_client):
    # The command turns this StageError into one line (see the missing-ingest case above).
    records = [review(f"u{u}", f"i{i}", START_MS + i * DAY_MS) for u in range(6) for i in range(6)]
    run = tmp_path / "run"
    ingest_by_hand(run, [write_jsonl(tmp_path / "Small.jsonl", records)])
    with pytest.raises(StageError, match="lower --num-negatives to at most 0"):
        run_sequences(run, SequencesSettings(), dask_client)
    assert not (run / "sequences").exists() and not list(run.glob(".tmp-*"))
