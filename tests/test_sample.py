"""`rrec sample`: the embedded default data has the raw Amazon Reviews 2023 format and a learnable structure."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import tracemalloc
from collections import Counter, defaultdict
from pathlib import Path

from core.hashing import code_version
from pipeline.sample import SampleSettings, generate_domain, generate_domains

REVIEW_KEYS = ["rating", "title", "text", "images", "asin", "parent_asin", "user_id", "timestamp", "helpful_vote", "verified_purchase"]
META_KEYS = [
    "main_category",
    "title",
    "average_rating",
    "rating_number",
    "features",
    "description",
    "price",
    "images",
    "videos",
    "store",
    "categories",
    "details",
    "parent_asin",
    "bought_together",
]
ASIN = re.compile(r"^[A-Z0-9]{10}$")


def _read(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_files_have_the_raw_amazon_2023_format(tmp_path: Path) -> None:
    report = generate_domain(tmp_path, "Grocery_and_Gourmet_Food", SampleSettings(users=300))
    assert report.reviews_path.name == "Grocery_and_Gourmet_Food.jsonl"
    assert report.meta_path.name == "meta_Grocery_and_Gourmet_Food.jsonl"
    reviews, metas = _read(report.reviews_path), _read(report.meta_path)
    assert len(reviews) == report.reviews and len(metas) == report.items_with_meta
    for review in reviews:
        assert list(review) == REVIEW_KEYS
        assert isinstance(review["rating"], float) and 1.0 <= review["rating"] <= 5.0
        assert isinstance(review["timestamp"], int) and review["timestamp"] > 1_400_000_000_000
        assert ASIN.match(review["asin"]) and ASIN.match(review["parent_asin"])
        assert isinstance(review["helpful_vote"], int) and isinstance(review["verified_purchase"], bool)
        assert isinstance(review["images"], list)
    for meta in metas:
        assert list(meta) == META_KEYS
        assert meta["price"] is None or isinstance(meta["price"], float)
        assert isinstance(meta["details"], dict) and isinstance(meta["categories"], list)
        assert isinstance(meta["features"], list) and isinstance(meta["description"], list)
        assert meta["main_category"] == "Grocery" and meta["categories"][0] == "Grocery & Gourmet Food"


def test_files_carry_the_defects_of_the_real_release(tmp_path: Path) -> None:
    report = generate_domain(tmp_path, "Office_Products", SampleSettings(users=800))
    reviews, metas = _read(report.reviews_path), _read(report.meta_path)
    with_meta = {m["parent_asin"] for m in metas}
    reviewed = {r["parent_asin"] for r in reviews}
    assert reviewed - with_meta, "some reviewed items must lack metadata"
    assert any(r["asin"] != r["parent_asin"] for r in reviews), "variants: asin != parent_asin"
    assert any("<br />" in r["text"] for r in reviews), "some texts hold HTML"
    assert any(m["price"] is None for m in metas), "some prices are missing"
    pairs = Counter((r["user_id"], r["parent_asin"]) for r in reviews)
    assert any(count > 1 for count in pairs.values()), "some (user, item) pairs repeat"
    by_user: dict[str, list[int]] = defaultdict(list)
    for r in reviews:
        by_user[r["user_id"]].append(r["timestamp"])
    assert any(len(ts) != len(set(ts)) for ts in by_user.values()), "some timestamps tie"
    assert len({m["parent_asin"] for m in metas}) == len(metas), "parent_asin is unique in meta"


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    a = generate_domain(tmp_path / "a", "Office_Products", SampleSettings(users=150, seed=7))
    b = generate_domain(tmp_path / "b", "Office_Products", SampleSettings(users=150, seed=7))
    c = generate_domain(tmp_path / "c", "Office_Products", SampleSettings(users=150, seed=8))
    assert a.reviews_path.read_bytes() == b.reviews_path.read_bytes()
    assert a.meta_path.read_bytes() == b.meta_path.read_bytes()
    assert a.reviews_path.read_bytes() != c.reviews_path.read_bytes()


def test_gzip_output_holds_the_same_records(tmp_path: Path) -> None:
    plain = generate_domain(tmp_path / "plain", "Office_Products", SampleSettings(users=100))
    packed = generate_domain(tmp_path / "gz", "Office_Products", SampleSettings(users=100, gzip=True))
    assert packed.reviews_path.name == "Office_Products.jsonl.gz"
    assert _read(plain.reviews_path) == _read(packed.reviews_path)
    assert _read(plain.meta_path) == _read(packed.meta_path)


def test_any_other_domain_name_gets_a_generic_catalog(tmp_path: Path) -> None:
    report = generate_domain(tmp_path, "Musical_Instruments", SampleSettings(users=50))
    metas = _read(report.meta_path)
    assert metas and metas[0]["main_category"] == "Musical Instruments"


def test_next_item_is_more_predictable_from_the_last_item_than_from_popularity(tmp_path: Path) -> None:
    """A first-order model over leaf categories beats always guessing the most popular one."""
    report = generate_domain(tmp_path, "Grocery_and_Gourmet_Food", SampleSettings(users=1500))
    leaf = {m["parent_asin"]: m["categories"][-1] for m in _read(report.meta_path)}
    sequences: dict[str, list[str]] = defaultdict(list)
    for r in _read(report.reviews_path):
        if r["parent_asin"] in leaf:
            sequences[r["user_id"]].append(leaf[r["parent_asin"]])
    users = sorted(sequences)
    fit, held_out = users[: len(users) // 2], users[len(users) // 2 :]
    popularity = Counter(c for u in fit for c in sequences[u])
    transitions: dict[str, Counter] = defaultdict(Counter)
    for u in fit:
        for prev, nxt in zip(sequences[u], sequences[u][1:]):
            transitions[prev][nxt] += 1
    most_popular = popularity.most_common(1)[0][0]
    hits_markov = hits_pop = total = 0
    for u in held_out:
        for prev, nxt in zip(sequences[u], sequences[u][1:]):
            guess = transitions[prev].most_common(1)[0][0] if transitions[prev] else most_popular
            hits_markov += guess == nxt
            hits_pop += most_popular == nxt
            total += 1
    assert hits_markov / total > 2 * hits_pop / total


def test_generation_streams_memory_does_not_grow_with_users(tmp_path: Path) -> None:
    def peak(users: int) -> tuple[int, int]:
        tracemalloc.start()
        report = generate_domain(tmp_path / str(users), "Office_Products", SampleSettings(users=users, items=400))
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top, report.reviews_path.stat().st_size

    (small, _), (large, written) = peak(1000), peak(10000)
    # Ten times the users: the written file grows tenfold, the memory high-water mark does not
    # (a bounded progress-bar history is all that may grow).
    assert large < written / 20, (large, written)
    assert large - small < 2 * 2**20, (small, large)


def test_default_size_leaves_thousands_of_users_with_five_reviews(tmp_path: Path) -> None:
    reports = generate_domains(tmp_path, SampleSettings())
    assert [r.domain for r in reports] == ["Grocery_and_Gourmet_Food", "Office_Products"]
    for report in reports:
        per_user = Counter(r["user_id"] for r in _read(report.reviews_path))
        assert sum(1 for n in per_user.values() if n >= 5) >= 1500


def test_cli_writes_both_domains(tmp_path: Path) -> None:
    rrec = Path(sys.executable).with_name("rrec")
    result = subprocess.run(
        [str(rrec), "sample", "--out", str(tmp_path), "--users", "60", "--gzip"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "Grocery_and_Gourmet_Food.jsonl.gz",
        "Grocery_and_Gourmet_Food.jsonl.gz.provenance.json",
        "Office_Products.jsonl.gz",
        "Office_Products.jsonl.gz.provenance.json",
        "meta_Grocery_and_Gourmet_Food.jsonl.gz",
        "meta_Office_Products.jsonl.gz",
    ]


def test_each_review_file_has_a_sidecar_saying_it_is_synthetic_with_seed_and_settings(tmp_path: Path) -> None:
    settings = SampleSettings(domains=["Office_Products"], users=40, seed=7, gzip=True)
    report = generate_domains(tmp_path, settings)[0]
    sidecar = json.loads((tmp_path / "Office_Products.jsonl.gz.provenance.json").read_text())
    assert report.reviews_path == tmp_path / "Office_Products.jsonl.gz"
    assert sidecar["kind"] == "synthetic" and sidecar["generator"] == "rrec sample"
    assert sidecar["domain"] == "Office_Products" and sidecar["seed"] == 7
    assert sidecar["code_version"] == code_version()
    # The settings are complete: they regenerate the same file.
    again = generate_domains(tmp_path / "again", SampleSettings(**sidecar["settings"]))[0]
    assert again.reviews_path.read_bytes() == report.reviews_path.read_bytes()


def test_cli_rejects_a_bad_option_with_a_clear_message(tmp_path: Path) -> None:
    rrec = Path(sys.executable).with_name("rrec")
    result = subprocess.run([str(rrec), "sample", "--out", str(tmp_path), "--users", "0"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "users" in result.stderr
