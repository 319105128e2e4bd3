"""Test data for the sequences stage: raw review files with the awkward cases, and an ingest
stage committed from them for tests that must not depend on `rrec ingest`.

`tricky_reviews` builds interleaved users with tied timestamps, repeated (user, item) pairs and
a chain of items that only fall out in later k-core rounds, in the raw Amazon 2023 JSONL format.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa

from core.hashing import hash_paths
from core.schemas import INTERACTIONS, ITEMS
from core.stage import RunDir
from core.tables import write_part

DAY_MS = 86_400_000
START_MS = 1_600_000_000_000


def review(user: str, item: str, timestamp: int, rating: float = 5.0, asin: str | None = None) -> dict[str, Any]:
    """One raw review record with the released keys in the released order."""
    return {
        "rating": rating,
        "title": "Review title",
        "text": "Fine <br />product",
        "images": [],
        "asin": asin or item,
        "parent_asin": item,
        "user_id": user,
        "timestamp": timestamp,
        "helpful_vote": 0,
        "verified_purchase": True,
    }


def meta(item: str, title: str) -> dict[str, Any]:
    """One raw metadata record (only the fields the sequences use carry real values)."""
    return {
        "main_category": "Grocery",
        "title": title,
        "average_rating": 4.5,
        "rating_number": 10,
        "features": [],
        "description": [],
        "price": None,
        "images": [],
        "videos": [],
        "store": f"Store of {item}",
        "categories": ["Grocery", title.split()[0]],
        "details": {},
        "parent_asin": item,
        "bought_together": None,
    }


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write records as JSON lines, gzip-compressed when the name ends in .gz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return path


def tricky_reviews(seed: int, users: int = 60, items: int = 40, mean_length: int = 9) -> list[dict[str, Any]]:
    """Interleaved reviews of ``users`` users over ``items`` items, with every awkward case.

    - timestamps drawn from a few days only, so many tie (within a user too);
    - ~10% repeated (user, item) pairs, some with an earlier timestamp than the first line;
    - a cascade of users C* and items X* that collapses one round after another under a
      5-core (each removal starves the next item or user);
    - lines shuffled, so source order differs from chronological and user order.
    """
    rng = random.Random(seed)
    records = []
    item_ids = [f"B{index:09d}" for index in range(items)]
    for user_index in range(users):
        user = f"A{user_index:05d}{rng.choice('XYZ')}"
        length = min(items // 3, max(1, int(rng.expovariate(1 / mean_length)) + rng.choice((0, 2, 4))))
        for _ in range(length):
            item = item_ids[min(int(rng.paretovariate(0.8)) - 1, items - 1)] if rng.random() < 0.3 else rng.choice(item_ids)
            timestamp = START_MS + rng.randrange(6) * DAY_MS + rng.choice((0, 0, 1, 500))
            records.append(review(user, item, timestamp, rating=float(rng.randint(1, 5))))
            if rng.random() < 0.1:
                records.append(review(user, item, timestamp + rng.choice((-DAY_MS, 0, DAY_MS)), rating=float(rng.randint(1, 5))))
    # A k-core cascade (for k = 5): user C_i rates three robust items and X_i, X_i+1 (5 items);
    # X_i is rated by C_i-1, C_i and three strong supporters (5 raters); X_0's fifth rater W
    # has one review. Round 1 drops W, round 2 X_0, round 3 C_0, round 4 X_1, and so on.
    chain = 4
    for i in range(chain):
        own = [f"X{i:09d}", f"X{i + 1:09d}"] if i < chain - 1 else [f"X{i:09d}", item_ids[3]]
        for j, item in enumerate([*item_ids[:3], *own]):
            records.append(review(f"C{i:05d}", item, START_MS + i * DAY_MS + j))
    for supporter in range(3):
        for j, item in enumerate([*item_ids[:15], *(f"X{i:09d}" for i in range(chain))]):
            records.append(review(f"S{supporter:05d}", item, START_MS + j * 1000))
    records.append(review("W00000", "X000000000", START_MS))
    rng.shuffle(records)
    return records


def ingest_by_hand(run: Path, review_files: list[Path], meta_files: Iterable[Path] = ()) -> None:
    """Commit an `ingest` stage built with plain json from raw files (source order kept).

    Stands in for `rrec ingest` where a test must isolate the sequences stage from it.
    """
    rows: dict[str, list[Any]] = {name: [] for name in INTERACTIONS.names}
    for file_index, review_file in enumerate(review_files):
        opener = gzip.open if str(review_file).endswith(".gz") else open
        with opener(review_file, "rt", encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                record = json.loads(line)
                rows["user_id"].append(record["user_id"])
                rows["parent_asin"].append(record["parent_asin"])
                rows["asin"].append(record["asin"])
                rows["rating"].append(record["rating"])
                rows["timestamp"].append(record["timestamp"])
                rows["review_title"].append(record["title"])
                rows["review_text"].append(record["text"])
                rows["helpful_vote"].append(record["helpful_vote"])
                rows["verified_purchase"].append(record["verified_purchase"])
                rows["src_file"].append(file_index)
                rows["src_line"].append(line_number)
    item_rows: dict[str, list[Any]] = {name: [] for name in ITEMS.names}
    for meta_file in meta_files:
        opener = gzip.open if str(meta_file).endswith(".gz") else open
        with opener(meta_file, "rt", encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                for name in ITEMS.names:
                    value = record.get(name)
                    if name == "details":
                        value = json.dumps(value)
                    elif name == "description":
                        value = " ".join(value or [])
                    item_rows[name].append(value)
    run_dir = RunDir(run)
    inputs = hash_paths([*review_files, *meta_files])
    with run_dir.stage("ingest", run_dir.fingerprint("ingest", {}, inputs), config={}, inputs=inputs) as out:
        # Two parts, so readers see a multi-file table as ingest writes it.
        interactions = pa.table(rows, schema=INTERACTIONS)
        half = interactions.num_rows // 2
        folder = out.table_dir("interactions")
        write_part(interactions.slice(0, half), folder, 0, INTERACTIONS)
        write_part(interactions.slice(half), folder, 1, INTERACTIONS)
        write_part(pa.table(item_rows, schema=ITEMS), out.table_dir("items"), 0, ITEMS)
        out.record(rows_in=interactions.num_rows, rows_out={"interactions": interactions.num_rows})
