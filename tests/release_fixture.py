"""A small, learnable release folder for the training and evaluation tests.

It follows DESIGN.md "Release layout" (``data/<config>/<split>-NNNNN-of-NNNNN.parquet`` with
rows of ``RELEASE_ROW``, the item catalog as config ``<config>_items`` with split ``items``, a
README.md whose YAML ``configs`` list the data files) without running the pipeline, so these
tests do not depend on the other stages.

The sequences are learnable: the catalog is made of product lines ("Lakeside Green Tea Pack 1"
... "Pack 8") and every user buys consecutive packs of one line, so the next item is always the
next pack of the line of the last item. Sequence models and the tiny LLM can both pick this up.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from core.schemas import ITEMS, RELEASE_ROW
from release.checksums import file_checksums

LINES = (
    ("Lakeside", "Green Tea"),
    ("Harbor", "Coffee Beans"),
    ("Meadow", "Dark Chocolate"),
    ("Summit", "Olive Oil"),
    ("Orchard", "Apple Juice"),
    ("Prairie", "Oat Cereal"),
    ("Canyon", "Hot Sauce"),
    ("Willow", "Honey Jar"),
)
PACKS_PER_LINE = 8
TEACHER_PROMPT_VERSION = "fixture-teacher-1"


def item_id(line: int, pack: int) -> str:
    """The parent_asin of pack ``pack`` (1-based) of product line ``line``."""
    return f"B{line:03d}{pack:05d}"


def item_title(line: int, pack: int) -> str:
    brand, product = LINES[line]
    return f"{brand} {product} Pack {pack}"


def _catalog() -> list[dict]:
    rows = []
    for line, (brand, product) in enumerate(LINES):
        for pack in range(1, PACKS_PER_LINE + 1):
            rows.append(
                {
                    "parent_asin": item_id(line, pack),
                    "title": item_title(line, pack),
                    "main_category": "Grocery",
                    "categories": ["Grocery", product],
                    "store": brand,
                    "price": float(3 + pack),
                    "average_rating": 4.5,
                    "rating_number": 10 * pack,
                    "features": [f"{product} in pack size {pack}"],
                    "description": f"{brand} {product}, pack {pack} of the line.",
                    "details": json.dumps({"Brand": brand}),
                }
            )
    return rows


def _user_rows(
    user_index: int, rng: random.Random, num_negatives: int, catalog: list[dict], annotated_splits: tuple[str, ...]
) -> dict[str, dict]:
    """One row per split for one user, leave-one-out over a run of consecutive packs."""
    length = rng.randint(5, PACKS_PER_LINE)
    line = rng.randrange(len(LINES))
    start = rng.randint(1, PACKS_PER_LINE - length + 1)
    packs = list(range(start, start + length))
    user_id = f"U{user_index:05d}"
    timestamps = [1_600_000_000_000 + user_index * 1000 + 86_400_000 * step for step in range(length)]
    events = [
        {
            "parent_asin": item_id(line, pack),
            "title": item_title(line, pack),
            "rating": float(rng.choice((3.0, 4.0, 5.0))),
            "timestamp": ts,
        }
        for pack, ts in zip(packs, timestamps)
    ]
    bought = {event["parent_asin"] for event in events}
    pool = [item for item in catalog if item["parent_asin"] not in bought]
    rows = {}
    for split, target_position in (("train", length - 3), ("validation", length - 2), ("test", length - 1)):
        target_event = events[target_position]
        history = events[:target_position]
        negatives = rng.sample(pool, min(num_negatives, len(pool)))
        candidates = [{"parent_asin": item["parent_asin"], "title": item["title"]} for item in negatives]
        target_index = rng.randint(0, len(candidates))
        candidates.insert(target_index, {"parent_asin": target_event["parent_asin"], "title": target_event["title"]})
        brand, product = LINES[line]
        annotated = split in annotated_splits
        rows[split] = {
            "user_id": user_id,
            "history": history,
            "target": {
                "parent_asin": target_event["parent_asin"],
                "title": target_event["title"],
                "categories": ["Grocery", product],
                "store": brand,
                "rating": target_event["rating"],
                "timestamp": target_event["timestamp"],
            },
            "candidates": candidates,
            "target_index": target_index,
            "rationale": (
                f"The user keeps buying {brand} {product} one pack after another and last bought "
                f"{history[-1]['title']}, so the next pack of that line fits."
                if annotated
                else None
            ),
            "user_preferences": f"Loyal to {brand} {product}." if annotated else None,
            "annotator": "template" if annotated else None,
            "model": "fixture" if annotated else None,
            "prompt_version": TEACHER_PROMPT_VERSION if annotated else None,
        }
    return rows


def _write_shards(table: pa.Table, folder: Path, split: str, shards: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    per_shard = -(-table.num_rows // shards)
    for index in range(shards):
        name = f"{split}-{index:05d}-of-{shards:05d}.parquet"
        pq.write_table(table.slice(index * per_shard, per_shard), folder / name)
        names.append(name)
    return names


def _card(config: str) -> str:
    return (
        "---\n"
        "pretty_name: rationale-rec test fixture\n"
        "license: cc-by-4.0\n"
        "configs:\n"
        f"- config_name: {config}\n"
        "  data_files:\n"
        f"  - split: train\n    path: data/{config}/train-*.parquet\n"
        f"  - split: validation\n    path: data/{config}/validation-*.parquet\n"
        f"  - split: test\n    path: data/{config}/test-*.parquet\n"
        f"- config_name: {config}_items\n"
        "  data_files:\n"
        f"  - split: items\n    path: data/{config}_items/items-*.parquet\n"
        "---\n\n"
        "# rationale-rec test fixture\n\nGenerated product-line sequences for tests.\n"
    )


def _git(folder: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=fixture", "-c", "user.email=fixture@example.invalid", *args],
        cwd=folder,
        check=True,
        capture_output=True,
    )


def make_release(
    directory: Path,
    n_users: int = 40,
    *,
    config: str = "grocery",
    num_negatives: int = 19,
    shards: int = 2,
    seed: int = 0,
    annotated_splits: tuple[str, ...] = ("train",),
    with_git_tag: str | None = "v1.0.0",
) -> Path:
    """Write a release folder with config ``config`` (train/validation/test) and its catalog.

    With ``with_git_tag`` the folder is also a local registry: a git repository with one commit
    tagged with that version, the way ``rrec release`` publishes versions. Rows of
    ``annotated_splits`` carry rationales (train only, by default, as in a release). Returns
    ``directory``.
    """
    directory = Path(directory)
    rng = random.Random(seed)
    catalog = _catalog()
    by_split: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for user_index in range(n_users):
        for split, row in _user_rows(user_index, rng, num_negatives, catalog, annotated_splits).items():
            by_split[split].append(row)
    for split, rows in by_split.items():
        _write_shards(pa.Table.from_pylist(rows, schema=RELEASE_ROW), directory / "data" / config, split, shards)
    _write_shards(pa.Table.from_pylist(catalog, schema=ITEMS), directory / "data" / f"{config}_items", "items", 1)
    (directory / "README.md").write_text(_card(config), encoding="utf-8")
    version = with_git_tag or "v0.0.0"
    manifest = {
        "version": version.lstrip("v"),
        "tag": version,
        "row_counts": {config: {split: len(rows) for split, rows in by_split.items()}, f"{config}_items": {"items": len(catalog)}},
        "files": file_checksums(directory),
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    if with_git_tag:
        if not (directory / ".git").exists():
            _git(directory, "init", "-q")
        _git(directory, "add", "-A")
        _git(directory, "commit", "-q", "-m", f"release {with_git_tag}")
        _git(directory, "tag", "-a", with_git_tag, "-m", f"release {with_git_tag}")
    return directory
