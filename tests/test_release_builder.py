"""The streaming release builder writes the in-memory builder's release, partition by partition.

Run folders come from ``tests/release_runs.py``. The reference is the in-memory builder
(``load_domains`` + ``write_data``): the streaming builder must write byte-identical data files
(same row order, schema, shards and checksums) and give the card the same statistics, however
the sequences are partitioned and whether its tasks run in this process or on a Dask cluster.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from release_runs import make_run
from test_dask_cluster import scheduler_address  # noqa: F401  (the real scheduler + workers fixture)

from core.tables import arrow_bytes, read_table, write_part
from datacards.statistics import domain_statistics
from release.builder import (
    STAGED,
    STAGING_BATCH_ROWS,
    build_range,
    ordered_parts,
    range_bounds,
    read_staging,
    shard_pieces,
    stream_release,
    user_sample,
    write_staging,
)
from release.checksums import file_checksums, verify_release
from release.layout import (
    DomainSource,
    ReleaseError,
    check_domains,
    load_domains,
    release_memory_estimate,
    shard_starts,
    write_data,
)
from release.loading import load_release
from release.publish import ReleaseSettings, release_runs
from release.shards import ROW_GROUP_ROWS, write_shard

SHARD_ROWS = 10


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    return [make_run(root, "Grocery_and_Gourmet_Food", users=60), make_run(root, "Office_Products", users=23)]


@pytest.fixture(scope="module")
def reference(runs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """The in-memory builder's data files and domains."""
    out = tmp_path_factory.mktemp("reference") / "v"
    domains = load_domains(runs)
    write_data(domains, out, SHARD_ROWS)
    return out, domains


def data_checksums(folder: Path) -> dict[str, str]:
    return {name: info["sha256"] for name, info in file_checksums(folder).items() if name.startswith("data/")}


def shuffled_copy(source: DomainSource, root: Path, parts: int) -> DomainSource:
    """The same run with its sequences and filtered rows shuffled across ``parts`` part files (users interleaved)."""
    copy = root / source.run.name
    for table_name in ("sequences", "filtered", "items"):
        table = read_table(source.run / table_name, table_name)
        order = list(range(table.num_rows))
        random.Random(7).shuffle(order)
        table = table.take(pa.array(order))
        step = -(-table.num_rows // parts)
        (copy / table_name).mkdir(parents=True, exist_ok=True)
        for index in range(parts):
            write_part(table.slice(index * step, step), copy / table_name, index)
    return DomainSource(copy, source.config, source.domain, source.stages, source.validation)


def test_streamed_data_files_equal_the_in_memory_builders(runs, reference, tmp_path) -> None:
    ref_dir, ref_domains = reference
    out = tmp_path / "streamed"
    domains = stream_release(check_domains(runs), out, SHARD_ROWS, partition_rows=7)
    assert data_checksums(out) == data_checksums(ref_dir)
    assert len(data_checksums(out)) > 10  # several shards per split, so shard cuts cross partitions
    # The checksums the shard tasks returned are those of the files on disk.
    on_disk = file_checksums(out)
    assert all(on_disk[name] == info for domain in domains for name, info in domain.files.items())
    assert {name for d in domains for name in d.files} == set(data_checksums(out))
    for streamed, in_memory in zip(domains, ref_domains):
        assert streamed.row_counts() == in_memory.row_counts()
        assert streamed.train_without_rationale == in_memory.train_without_rationale > 0
        assert all(streamed.splits[s].schema == in_memory.splits[s].schema for s in in_memory.splits)
        assert streamed.items.num_rows == in_memory.items.num_rows
        assert domain_statistics(streamed) == domain_statistics(in_memory)
        assert streamed.row_statistics.first_rows == in_memory.row_statistics.first_rows
    assert not any(p.name.endswith("-partitions") for p in tmp_path.iterdir())  # staging removed


def test_release_rows_do_not_depend_on_how_the_input_is_partitioned(runs, reference, tmp_path) -> None:
    ref_dir, ref_domains = reference
    sources = [shuffled_copy(source, tmp_path / "shuffled", parts=5) for source in check_domains(runs)]
    out = tmp_path / "streamed"
    domains = stream_release(sources, out, SHARD_ROWS, partition_rows=11)
    assert data_checksums(out) == data_checksums(ref_dir)
    assert [domain_statistics(d) for d in domains] == [domain_statistics(d) for d in ref_domains]


def test_the_cards_arrow_sizes_do_not_depend_on_the_partitions(runs, tmp_path) -> None:
    def sizes(domains: list) -> list[tuple[str, str, int]]:
        return [(d.config, name, table.nbytes) for d in domains for name, table in {**d.splits, "items": d.items}.items()]

    plain = stream_release(check_domains(runs), tmp_path / "a", SHARD_ROWS, partition_rows=7)
    shuffled = [shuffled_copy(source, tmp_path / "shuffled", parts=3) for source in check_domains(runs)]
    assert sizes(stream_release(shuffled, tmp_path / "b", SHARD_ROWS, partition_rows=13)) == sizes(plain)
    assert all(size > 0 for *_, size in sizes(plain))
    # ... and they are the sizes of the rows as a reader of the shards gets them, group by group.
    for config, name, size in sizes(plain):
        folder = tmp_path / "a" / "data" / (f"{config}_items" if name == "items" else config)
        files = [pq.ParquetFile(path) for path in sorted(folder.glob(f"{name}-*.parquet"))]
        assert size == sum(arrow_bytes(f.read_row_group(i)) for f in files for i in range(f.num_row_groups))


def test_a_staging_file_reads_back_any_row_range_across_its_batches(tmp_path) -> None:
    rows = 2 * STAGING_BATCH_ROWS + 345
    table = pa.table({"user_id": [f"u{i:06d}" for i in range(rows)], "n": pa.array(range(rows), pa.int64())})
    chunked = pa.concat_tables([table.slice(0, 777), table.slice(777)])  # chunk boundaries off the batch grid
    write_staging(chunked, tmp_path / f"s{STAGED}")
    for offset, count in [
        (0, None),
        (0, 5),
        (STAGING_BATCH_ROWS - 3, 10),
        (STAGING_BATCH_ROWS, STAGING_BATCH_ROWS),
        (rows - 1, 1),
        (12_345, None),
    ]:
        expected = table.slice(offset, rows - offset if count is None else count)
        assert read_staging(tmp_path / f"s{STAGED}", offset, count).equals(expected), (offset, count)
    write_staging(table.slice(0, 0), tmp_path / f"empty{STAGED}")
    assert read_staging(tmp_path / f"empty{STAGED}").num_rows == 0


def test_a_shard_whose_rows_fail_to_arrive_is_not_published(tmp_path) -> None:
    # The next row group is read and decoded in a second thread while one is written: an error
    # there must reach the caller, and no file may appear under the shard's name.
    table = pa.table({"user_id": [f"u{i:06d}" for i in range(ROW_GROUP_ROWS + 5)]})

    def pieces():
        yield table
        raise OSError("staging file vanished")

    with pytest.raises(OSError, match="staging file vanished"):
        write_shard(pieces, tmp_path / "train-00000-of-00001.parquet", table.schema)
    assert not (tmp_path / "train-00000-of-00001.parquet").exists()
    info = write_shard([table.slice(0, 3), table.slice(3)], tmp_path / "ok.parquet", table.schema)
    assert pq.read_table(tmp_path / "ok.parquet").equals(table)
    assert pq.ParquetFile(tmp_path / "ok.parquet").num_row_groups == 2
    assert info["nbytes"] == arrow_bytes(table.slice(0, ROW_GROUP_ROWS)) + arrow_bytes(table.slice(ROW_GROUP_ROWS))


def test_streamed_release_runs_on_the_session_cluster(runs, reference, dask_client, tmp_path) -> None:
    ref_dir, _ = reference
    out = tmp_path / "streamed"
    stream_release(check_domains(runs), out, SHARD_ROWS, partition_rows=9, client=dask_client)
    assert data_checksums(out) == data_checksums(ref_dir)


def test_user_ranges_hold_about_partition_rows_and_each_user_once(runs) -> None:
    run = runs[0]
    parts = sorted(str(p) for p in (run / "sequences").glob("*.parquet"))
    stride = 2
    bounds = range_bounds([user_sample(p, stride) for p in parts], stride, partition_rows=12)
    lows, highs = [None, *bounds], [*bounds, None]
    sizes, users = [], []
    for index, (low, high) in enumerate(zip(lows, highs)):
        result = build_range(str(run), low, high, str(run.parent / "ranges" / f"{index:05d}"))
        sizes.append(sum(result.rows.values()) + result.train_without_rationale)
        # Every user has a test row: the test file lists the range's users.
        users.append(set(read_staging(run.parent / "ranges" / f"{index:05d}" / f"test{STAGED}")["user_id"].to_pylist()))
    total = read_table(run / "sequences", "sequences").num_rows
    assert sum(sizes) == total  # every sequences row is in exactly one range
    assert len(sizes) >= total // 12 - 1
    assert max(sizes) <= 12 + 2 * stride + 3  # a range overshoots by at most a sample's rows and one user
    assert all(not (a & b) for i, a in enumerate(users) for b in users[i + 1 :])


def test_orphan_rationales_are_refused_by_the_streaming_builder_too(runs, tmp_path) -> None:
    (source,) = check_domains(runs[:1])
    copy = shuffled_copy(source, tmp_path / "orphan", parts=2)
    sequences = read_table(copy.run / "sequences", "sequences")
    annotated_user = read_table(copy.run / "filtered", "filtered")["user_id"][0]
    kept = sequences.filter(pc.not_equal(sequences["user_id"], annotated_user))
    for path in (copy.run / "sequences").glob("*.parquet"):
        path.unlink()
    write_part(kept, copy.run / "sequences", 0)
    with pytest.raises(ReleaseError, match="1 rationale"):
        stream_release([copy], tmp_path / "out", SHARD_ROWS, partition_rows=10)


def test_release_runs_on_the_chain_client_publishes_a_verified_loadable_release(
    runs, reference, dask_client, tmp_path, isolated_caches
) -> None:
    ref_dir, _ = reference
    registry = tmp_path / "registry"
    result = release_runs(runs, registry, ReleaseSettings(shard_rows=SHARD_ROWS, partition_rows=8), client=dask_client)
    assert result.status == "released"
    assert data_checksums(registry) == data_checksums(ref_dir)
    assert verify_release(registry)["files"] == result.manifest["files"]
    train = load_release(registry, "grocery", split="train", revision=result.tag)
    assert len(train) == result.manifest["row_counts"]["grocery"]["train"]
    assert json.loads((registry / "manifest.json").read_text())["row_counts"]["office"]["test"] == 23


@pytest.mark.slow
def test_release_runs_unchanged_on_a_multi_worker_scheduler_cluster(runs, reference, scheduler_address, tmp_path) -> None:  # noqa: F811
    # A real `dask scheduler` with two `dask worker` processes (tests/test_dask_cluster.py), as `--scheduler` uses.
    from distributed import Client

    ref_dir, _ = reference
    registry = tmp_path / "registry"
    with Client(scheduler_address, timeout="30s") as client:
        result = release_runs(runs, registry, ReleaseSettings(shard_rows=SHARD_ROWS, partition_rows=8), client=client)
        prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
        workers = len(client.scheduler_info()["workers"])
    assert result.status == "released" and workers == 2
    assert {"user_sample", "build_range", "build_items", "write_shard_from"} <= set(prefixes)
    assert data_checksums(registry) == data_checksums(ref_dir)
    assert verify_release(registry)["files"] == result.manifest["files"]


def test_parts_in_user_order_stream_part_by_part_and_other_layouts_are_cut_into_ranges(runs, tmp_path) -> None:
    (source,) = check_domains(runs[:1])
    in_order = [user_sample(str(p), 1) for p in sorted((source.run / "sequences").glob("*.parquet"))]
    assert [p.rows for p in ordered_parts(in_order)] == [p.rows for p in in_order]
    shuffled = shuffled_copy(source, tmp_path, parts=3)
    assert ordered_parts([user_sample(str(p), 1) for p in sorted((shuffled.run / "sequences").glob("*.parquet"))]) is None


def test_the_memory_refusal_counts_one_partition_not_the_whole_release(runs, tmp_path) -> None:
    whole, partition = release_memory_estimate(runs[0]), release_memory_estimate(runs[0], rows_per_task=10)
    assert 0 < partition < whole
    registry = tmp_path / "registry"
    with pytest.raises(ReleaseError, match=r"lower release\.partition_rows"):
        release_runs([runs[0]], registry, ReleaseSettings(max_memory_gb=partition / 2 / 2**30, partition_rows=10))
    # Too much for the in-memory builder, enough for partitions of 10 rows.
    between = ReleaseSettings(max_memory_gb=(partition + whole) / 2 / 2**30, partition_rows=10)
    assert release_runs([runs[0]], registry, between).status == "released"


def test_the_released_catalog_holds_exactly_the_items_the_rows_mention(tmp_path) -> None:
    """Catalog rows no released row mentions stay out (the join tasks' bitmaps), as in the in-memory builder."""
    run = make_run(tmp_path / "runs", "Grocery_and_Gourmet_Food", users=30)
    items = read_table(run / "items", "items")
    unused = items.slice(0, 5)
    unused = unused.set_column(0, "parent_asin", pa.array([f"B0UNUSED{n:02d}" for n in range(5)]))
    write_part(unused, run / "items", 99)  # an extra part file: items no sequence names
    sources = check_domains([run])
    streamed, reference = tmp_path / "streamed", tmp_path / "reference"
    (domain,) = stream_release(sources, streamed, SHARD_ROWS, partition_rows=7)
    write_data(load_domains([run]), reference, SHARD_ROWS)
    assert data_checksums(streamed) == data_checksums(reference)
    catalog = read_table(streamed / "data" / f"{domain.config}_items", "items")
    released = set(catalog["parent_asin"].to_pylist())
    assert not released & set(unused["parent_asin"].to_pylist())
    mentioned = set()
    for split in ("train", "validation", "test"):
        rows = pa.concat_tables(pq.read_table(path) for path in sorted((streamed / "data" / domain.config).glob(f"{split}-*.parquet")))
        mentioned |= set(pc.struct_field(pc.list_flatten(rows["candidates"]), "parent_asin").to_pylist())
        mentioned |= set(pc.struct_field(pc.list_flatten(rows["history"]), "parent_asin").to_pylist())
        mentioned |= set(pc.struct_field(rows["target"], "parent_asin").to_pylist())
    assert released == mentioned & set(items["parent_asin"].to_pylist())
    assert domain.items.num_rows == len(released) < items.num_rows + unused.num_rows


def test_mentioned_items_of_dictionary_encoded_rows_equal_those_of_the_decoded_rows():
    """The items a release names, read through the dictionaries of encoded ids (shared by
    several chunks, sliced, with unused entries and null ids), are those of the plain rows."""
    from core.schemas import RELEASE_ROW
    from release.layout import mentioned_items
    from release.shards import with_dictionary_leaves

    rng = random.Random(3)
    asins = [f"B{n:09d}" for n in range(50)]

    def row(n: int) -> dict:
        def item(asin: str | None) -> dict:
            return {"parent_asin": asin, "title": f"title of {asin}"}

        history = [{**item(rng.choice(asins)), "rating": 5.0, "timestamp": 1} for _ in range(rng.randint(0, 4))]
        candidates = [item(rng.choice([*asins[:20], None])) for _ in range(5)]
        return {
            "user_id": f"U{n}",
            "split": "test",
            "history": history,
            "target": {**item(asins[n % 7]), "rating": 4.0, "timestamp": 2},
            "candidates": candidates,
        }

    plain = pa.Table.from_pylist([row(n) for n in range(40)], schema=RELEASE_ROW)
    encoded = plain.cast(with_dictionary_leaves(RELEASE_ROW))
    pieces = [encoded.slice(0, 15), encoded.slice(15, 10), pa.concat_tables([encoded.slice(25), encoded.slice(30, 3)])]
    expected = sorted(mentioned_items([piece.cast(RELEASE_ROW) for piece in pieces]).to_pylist(), key=str)
    assert sorted(mentioned_items(pieces).to_pylist(), key=str) == expected
    assert sorted(mentioned_items([plain]).to_pylist(), key=str) == expected
    assert None in expected and len(expected) > 20


def test_the_catalog_rows_marked_through_remembered_dictionaries_are_those_the_rows_name():
    """``mentioned_rows`` (dictionaries matched against the catalog once per content) marks
    exactly the catalog rows ``is_in(mentioned_items)`` marks: for pieces sharing one dictionary
    (read apart, so only their contents are equal), a dictionary that repeats an id or holds a
    null entry, plain rows, missing ids, and a catalog with a repeated and a missing id."""
    from core.schemas import RELEASE_ROW
    from release.builder import mentioned_rows
    from release.layout import mentioned_items
    from release.shards import with_dictionary_leaves

    asins = [f"B{n:09d}" for n in range(30)]
    rng = random.Random(5)

    def rows(count: int, candidates: list[str | None]) -> pa.Table:
        def item(asin: str | None) -> dict:
            return {"parent_asin": asin, "title": None}

        return pa.Table.from_pylist(
            [
                {
                    "user_id": f"U{n}",
                    "history": [{**item(rng.choice(asins[:10])), "rating": 5.0, "timestamp": 1}],
                    "target": {**item(asins[n % 3]), "rating": 4.0, "timestamp": 2},
                    "candidates": [item(rng.choice(candidates)) for _ in range(3)],
                }
                for n in range(count)
            ],
            schema=RELEASE_ROW,
        )

    def over(table: pa.Table, dictionary: list[str | None]) -> pa.Table:
        """``table`` with its candidates' ids encoded over ``dictionary`` (the last entry of each id)."""
        encoded = table.cast(with_dictionary_leaves(RELEASE_ROW)).combine_chunks()
        lists = encoded.column("candidates").chunk(0)
        ids = pc.struct_field(lists.values, "parent_asin").dictionary_decode()
        from_end = pc.index_in(ids, value_set=pa.array(dictionary[::-1], pa.string()), skip_nulls=True)
        codes = pc.subtract(pa.scalar(len(dictionary) - 1, pa.int32()), from_end)
        struct = pa.StructArray.from_arrays(
            [pa.DictionaryArray.from_arrays(codes, pa.array(dictionary, pa.string())), lists.values.field(1)],
            fields=list(lists.type.value_type),
        )
        column = pa.ListArray.from_arrays(lists.offsets, struct, type=lists.type)
        return encoded.set_column(encoded.schema.get_field_index("candidates"), "candidates", pa.chunked_array([column]))

    shared = [*asins[::-1], "B-unused"]
    pieces = [
        over(rows(12, asins[10:20]), list(shared)),
        over(rows(9, asins[15:25]), list(shared)),  # the same dictionary, another copy
        over(rows(2, [None]), list(shared)),  # missing candidates
        over(rows(6, [asins[26]]), [*asins, asins[26]]),  # repeats an id: the rows name its second entry
        over(rows(5, asins[22:24]), [None, *asins]),  # a null entry
        rows(4, asins[24:26]),  # plain
    ]
    catalog = pa.array([*asins[::2], asins[12], None, "B-elsewhere", *asins[1::2]])
    expected = pc.is_in(catalog, value_set=mentioned_items([p.cast(RELEASE_ROW) for p in pieces])).to_numpy(zero_copy_only=False)
    assert mentioned_rows(catalog, pieces).tolist() == expected.tolist()
    assert mentioned_rows(catalog, pieces).tolist() == expected.tolist()  # remembered positions: the same
    assert expected[len(asins[::2]) + 1] and expected.sum() > 20  # the missing candidate names the catalog's missing id


def test_shards_are_as_even_as_rows_allow_and_never_above_shard_rows() -> None:
    assert shard_starts(108_795, 100_000) == [0, 54_397, 108_795]  # not 100,000 + 8,795
    assert shard_starts(0, 10) == [0, 0]  # an empty split still gets its one (empty) shard
    for rows in [*range(0, 60), 99_999, 100_000, 100_001, 326_385]:
        for shard_rows in (1, 3, 7, 10, 100_000):
            starts = shard_starts(rows, shard_rows)
            sizes = [end - start for start, end in itertools.pairwise(starts)]
            assert starts[0] == 0 and starts[-1] == rows
            assert len(sizes) == max(1, -(-rows // shard_rows))
            assert max(sizes) <= shard_rows and max(sizes) - min(sizes) <= 1


def test_shard_pieces_read_exactly_the_rows_of_each_shard() -> None:
    rng = random.Random(3)
    for _ in range(300):
        files = [(f"part-{i}", rng.choice([0, 0, 1, 5, 9, 40])) for i in range(rng.randint(1, 6))]
        shard_rows = rng.randint(1, 50)
        rows = [(name, row) for name, count in files for row in range(count)]  # the split, in order
        starts = shard_starts(len(rows), shard_rows)
        pieces = shard_pieces(files, shard_rows)
        assert len(pieces) == len(starts) - 1
        for shard, (start, end) in enumerate(itertools.pairwise(starts)):
            read = [(name, row) for name, first, count in pieces[shard] for row in range(first, first + count)]
            assert read == rows[start:end]
            assert all(count > 0 for _, _, count in pieces[shard])


def test_the_statistics_given_while_shards_are_written_are_the_releases(runs, dask_client, tmp_path) -> None:
    """The publisher draws the card's figures from it while the cluster writes the shards:
    its statistics must be the written release's."""
    seen: list = []
    domains = stream_release(check_domains(runs), tmp_path / "v", SHARD_ROWS, 9, dask_client, while_writing=seen.append)
    assert [statistics.config for statistics in seen] == [d.config for d in domains]
    for statistics, domain in zip(seen, domains):
        assert statistics == domain_statistics(domain)
        assert statistics.rows == domain.row_counts() and statistics.catalog_items == domain.catalog_items

    def failing(statistics) -> None:
        raise RuntimeError("drawing failed")

    # An error in it waits for the shard tasks (they read the staging files), then reaches the
    # caller with the staging files removed.
    with pytest.raises(RuntimeError, match="drawing failed"):
        stream_release(check_domains(runs), tmp_path / "w", SHARD_ROWS, 9, dask_client, while_writing=failing)
    assert not any(p.name.endswith("-partitions") for p in tmp_path.iterdir())
