"""The good run folder and the planted defects of the validation tests (shared by their modules).

The good run folder is built directly with the stage contract (``RunDir.stage`` + ``write_part``):
internally consistent tables of a few hundred rows, each table in two part files so the
whole-table checks (duplicates, validation vs test rows) really cross partitions.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.schemas import FILTERED, INTERACTIONS, ITEMS, SEQUENCES
from core.stage import RunDir
from core.tables import write_part

MAX_HISTORY = 4
NUM_NEGATIVES = 7
N_USERS = 24
N_ITEMS = 60
BASE_TS = 1_600_000_000_000  # 2020-09-13, in milliseconds
DAY_MS = 86_400_000
SCHEMAS = {"interactions": INTERACTIONS, "items": ITEMS, "sequences": SEQUENCES, "filtered": FILTERED}
STAGE_OF = {"interactions": "ingest", "items": "ingest", "sequences": "sequences", "filtered": "filter"}


def _asin(i: int) -> str:
    return f"B{i:09d}"


def _good_rows(seed: int = 7, max_history: int = MAX_HISTORY) -> dict[str, list[list[dict[str, Any]]]]:
    """Rows of every table, already split into two partitions per table (max_history 0: no cut)."""
    rng = random.Random(seed)
    catalog = [_asin(i) for i in range(N_ITEMS)]
    titles = {a: f"Item {a[-3:]} organic snack" for a in catalog}
    items = [
        {
            "parent_asin": a,
            "title": titles[a],
            "main_category": "Grocery",
            "categories": ["Grocery", "Snacks"],
            "store": "Acme",
            "price": 3.5 + i % 7,
            "average_rating": 4.2,
            "rating_number": 10 + i,
            "features": ["tasty"],
            "description": "A snack.",
            "details": "{}",
        }
        for i, a in enumerate(catalog)
    ]
    interactions, sequences, filtered = [], [], []
    line = 0
    for u in range(N_USERS):
        user = f"U{u:04d}"
        length = 4 + u % 6  # 4..9 items: some histories are truncated to MAX_HISTORY, some not
        bought = rng.sample(catalog, length)
        stamps = [BASE_TS + u * DAY_MS + k * DAY_MS for k in range(length)]
        for asin, ts in zip(bought, stamps, strict=True):
            interactions.append(
                {
                    "user_id": user,
                    "parent_asin": asin,
                    "asin": asin,
                    "rating": float(rng.randint(1, 5)),
                    "timestamp": ts,
                    "review_title": "Good",
                    "review_text": "Tasty and fresh.",
                    "helpful_vote": rng.randint(0, 3),
                    "verified_purchase": True,
                    "src_file": 0,
                    "src_line": line,
                }
            )
            line += 1
        others = [a for a in catalog if a not in bought]
        for split, target_pos in (("train", length - 3), ("validation", length - 2), ("test", length - 1)):
            history = [
                {"parent_asin": bought[k], "title": titles[bought[k]], "rating": 4.0, "timestamp": stamps[k]} for k in range(target_pos)
            ][-max_history if max_history else 0 :]
            target = bought[target_pos]
            candidates = [target, *rng.sample(others, NUM_NEGATIVES)]
            rng.shuffle(candidates)
            sequences.append(
                {
                    "user_id": user,
                    "split": split,
                    "history": history,
                    "target": {
                        "parent_asin": target,
                        "title": titles[target],
                        "categories": ["Grocery"],
                        "store": "Acme",
                        "rating": 5.0,
                        "timestamp": stamps[target_pos],
                    },
                    "candidates": [{"parent_asin": c, "title": titles[c]} for c in candidates],
                    "target_index": candidates.index(target),
                }
            )
            if split == "train":
                filtered.append(
                    {
                        "user_id": user,
                        "split": split,
                        "target_parent_asin": target,
                        "rationale": f"The user keeps buying organic snacks such as {titles[history[-1]['parent_asin']]}, so {titles[target]} fits.",
                        "user_preferences": "Prefers organic snacks from small brands.",
                        "coherent": True,
                        "annotator": "template",
                        "model": "template-v1",
                        "prompt_version": "teacher-v1",
                        "input_tokens": 120,
                        "output_tokens": 40,
                        "request_hash": f"h{u}",
                    }
                )
    half = N_USERS // 2
    return {
        "interactions": [interactions[: len(interactions) // 2], interactions[len(interactions) // 2 :]],
        "items": [items[: N_ITEMS // 2], items[N_ITEMS // 2 :]],
        # Validation rows in one part, test rows in the other: the comparison must cross partitions.
        "sequences": [[r for r in sequences if r["split"] != "test"], [r for r in sequences if r["split"] == "test"]],
        "filtered": [filtered[:half], filtered[half:]],
    }


def write_run(path: Path, tables: dict[str, list[list[dict[str, Any]]]]) -> Path:
    """Write tables into a run folder through the real stage contract, one stage per producer."""
    run = RunDir(path)
    by_stage: dict[str, list[str]] = {}
    for table in tables:
        by_stage.setdefault(STAGE_OF[table], []).append(table)
    for stage, names in by_stage.items():
        config = {"max_history": MAX_HISTORY, "num_negatives": NUM_NEGATIVES} if stage == "sequences" else {}
        with run.stage(stage, fingerprint=f"test-{stage}", config=config) as out:
            for table in names:
                folder = out.table_dir(table)
                for index, rows in enumerate(tables[table]):
                    write_part(pa.Table.from_pylist(rows, schema=SCHEMAS[table]), folder, index, SCHEMAS[table])
                out.record(rows_out={table: sum(len(r) for r in tables[table])})
    return path


def build_good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The good run folder (build once per test module)."""
    return write_run(tmp_path_factory.mktemp("good") / "Grocery", _good_rows())


# -- planted defects: one per expectation ---------------------------------------------------------
Tables = dict[str, list[list[dict[str, Any]]]]


def _first(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    return next(r for r in rows if all(r[k] == v for k, v in match.items()))


def _set(table: str, column: str, value: Any) -> Callable[[Tables], None]:
    def plant(t: Tables) -> None:
        row = t[table][0][0] if table != "sequences" else _first(t[table][0], split="train")
        row[column] = value

    return plant


def _duplicate_across_parts(table: str, pick: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None) -> Callable[[Tables], None]:
    def plant(t: Tables) -> None:
        source, other = (1, 0) if table == "sequences" else (0, 1)
        row = pick(t[table][source]) if pick else t[table][source][0]
        t[table][other].append(json.loads(json.dumps(row)))

    return plant


def _empty(table: str) -> Callable[[Tables], None]:
    def plant(t: Tables) -> None:
        t[table] = [[], []]

    return plant


def _train_row(t: Tables, min_history: int = 1) -> dict[str, Any]:
    return next(r for r in t["sequences"][0] if r["split"] == "train" and len(r["history"]) >= min_history)


def _unused_item(t: Tables, row: dict[str, Any]) -> str:
    user = row["user_id"]
    used = {i["parent_asin"] for i in t["interactions"][0] + t["interactions"][1] if i["user_id"] == user}
    used |= {c["parent_asin"] for c in row["candidates"]}
    return next(_asin(i) for i in range(N_ITEMS) if _asin(i) not in used)


def _validation_history_differs(t: Tables) -> None:
    row = next(r for r in t["sequences"][0] if r["split"] == "validation")
    row["history"][-1]["parent_asin"] = _unused_item(t, row)


def _validation_target_differs(t: Tables) -> None:
    row = next(r for r in t["sequences"][0] if r["split"] == "validation")
    replacement = _unused_item(t, row)
    row["target"]["parent_asin"] = replacement
    row["candidates"][row["target_index"]]["parent_asin"] = replacement


def _target_asin_malformed(t: Tables) -> None:
    row = _train_row(t)
    row["target"]["parent_asin"] = "b0-lower"
    row["candidates"][row["target_index"]]["parent_asin"] = "b0-lower"


def _target_in_future(t: Tables) -> None:
    _train_row(t)["target"]["timestamp"] = int(time.time() * 1000) + 3650 * DAY_MS


def _history_empty(t: Tables) -> None:
    _train_row(t)["history"] = []


def _history_out_of_order(t: Tables) -> None:
    history = _train_row(t, min_history=2)["history"]
    history[0]["timestamp"], history[1]["timestamp"] = history[1]["timestamp"], history[0]["timestamp"]


def _history_after_target(t: Tables) -> None:
    row = _train_row(t)
    row["history"][-1]["timestamp"] = row["target"]["timestamp"] + 1


def _target_index_wrong(t: Tables) -> None:
    row = _train_row(t)
    row["target_index"] = (row["target_index"] + 1) % len(row["candidates"])


def _negatives(row: dict[str, Any]) -> list[int]:
    return [i for i in range(len(row["candidates"])) if i != row["target_index"]]


def _candidate_repeated(t: Tables) -> None:
    row = _train_row(t)
    first, second = _negatives(row)[:2]
    row["candidates"][second] = dict(row["candidates"][first])


def _candidate_in_history(t: Tables) -> None:
    row = _train_row(t)
    row["candidates"][_negatives(row)[0]]["parent_asin"] = row["history"][0]["parent_asin"]


def _candidate_missing(t: Tables) -> None:
    row = _train_row(t)
    dropped = _negatives(row)[-1]
    del row["candidates"][dropped]
    if dropped < row["target_index"]:
        row["target_index"] -= 1


def _rationale(text: str) -> Callable[[Tables], None]:
    return _set("filtered", "rationale", text)


def _drop_column(table: str, column: str) -> Callable[[Tables], None]:
    def plant(t: Tables) -> None:
        t[table] = [[{k: v for k, v in r.items() if k != column} for r in part] for part in t[table]]

    return plant


DEFECTS: dict[str, tuple[str, Callable[[Tables], None]]] = {
    "interactions_columns_match_schema": ("interactions", _drop_column("interactions", "helpful_vote")),
    "interactions_not_empty": ("interactions", _empty("interactions")),
    "interactions_source_rows_unique": ("interactions", _duplicate_across_parts("interactions")),
    "interactions_user_id_not_null": ("interactions", _set("interactions", "user_id", None)),
    "interactions_parent_asin_not_null": ("interactions", _set("interactions", "parent_asin", None)),
    "interactions_parent_asin_format": ("interactions", _set("interactions", "parent_asin", "b00-lower")),
    "interactions_rating_not_null": ("interactions", _set("interactions", "rating", None)),
    "interactions_rating_in_range": ("interactions", _set("interactions", "rating", 6.0)),
    "interactions_timestamp_not_null": ("interactions", _set("interactions", "timestamp", None)),
    "interactions_timestamp_plausible": ("interactions", _set("interactions", "timestamp", BASE_TS // 1000)),
    "interactions_helpful_vote_non_negative": ("interactions", _set("interactions", "helpful_vote", -1)),
    "items_columns_match_schema": ("items", _drop_column("items", "store")),
    "items_not_empty": ("items", _empty("items")),
    "items_parent_asin_unique": ("items", _duplicate_across_parts("items")),
    "items_parent_asin_not_null": ("items", _set("items", "parent_asin", None)),
    "items_parent_asin_format": ("items", _set("items", "parent_asin", "B0123")),
    "items_title_not_null": ("items", _set("items", "title", None)),
    "items_average_rating_in_range": ("items", _set("items", "average_rating", 7.5)),
    "items_rating_number_non_negative": ("items", _set("items", "rating_number", -3)),
    "items_price_non_negative": ("items", _set("items", "price", -1.0)),
    "sequences_columns_match_schema": ("sequences", _drop_column("sequences", "target_index")),
    "sequences_not_empty": ("sequences", _empty("sequences")),
    "sequences_one_row_per_user_and_evaluation_split": (
        "sequences",
        _duplicate_across_parts("sequences", lambda rows: _first(rows, split="test")),
    ),
    "sequences_validation_history_is_test_history_minus_last": ("sequences", _validation_history_differs),
    "sequences_validation_target_is_last_test_history_item": ("sequences", _validation_target_differs),
    "sequences_user_id_not_null": ("sequences", _set("sequences", "user_id", None)),
    "sequences_split_known": ("sequences", _set("sequences", "split", "dev")),
    "sequences_split_not_null": ("sequences", _set("sequences", "split", None)),
    "sequences_target_parent_asin_format": ("sequences", _target_asin_malformed),
    "sequences_target_timestamp_plausible": ("sequences", _target_in_future),
    "sequences_history_length_in_bounds": ("sequences", _history_empty),
    "sequences_history_chronological": ("sequences", _history_out_of_order),
    "sequences_history_before_target": ("sequences", _history_after_target),
    "sequences_target_in_candidates_once_at_index": ("sequences", _target_index_wrong),
    "sequences_candidates_unique": ("sequences", _candidate_repeated),
    "sequences_candidates_not_in_history": ("sequences", _candidate_in_history),
    "sequences_candidate_count": ("sequences", _candidate_missing),
    "filtered_columns_match_schema": ("filtered", _drop_column("filtered", "model")),
    "filtered_not_empty": ("filtered", _empty("filtered")),
    "filtered_one_rationale_per_example": ("filtered", _duplicate_across_parts("filtered")),
    "filtered_rationale_not_null": ("filtered", _rationale(None)),
    "filtered_rationale_not_blank": ("filtered", _rationale(" " * 40)),
    "filtered_rationale_length_in_bounds": ("filtered", _rationale("Fits well.")),
    "filtered_coherent_not_null": ("filtered", _set("filtered", "coherent", None)),
    "filtered_coherent_true": ("filtered", _set("filtered", "coherent", False)),
    "filtered_rationale_no_email": ("filtered", _rationale("Ask jane.doe@example.com why this snack fits the user's taste.")),
    "filtered_rationale_no_phone": ("filtered", _rationale("Call 555-123-4567 to hear why this snack fits the user's taste.")),
    "filtered_rationale_no_url": ("filtered", _rationale("See https://example.org/snacks for why this snack fits the user's taste.")),
    "filtered_user_preferences_no_contact_details": ("filtered", _set("filtered", "user_preferences", "Writes from www.example.com")),
    "filtered_prompt_version_not_null": ("filtered", _set("filtered", "prompt_version", None)),
}


def _write_table_only(
    path: Path, table: str, partitions: list[list[dict[str, Any]]], schema: pa.Schema | None = None, max_history: int = MAX_HISTORY
) -> None:
    """Write one table (possibly missing columns, to plant schema defects) plus the sequences config."""
    run = RunDir(path)
    config = {"max_history": max_history, "num_negatives": NUM_NEGATIVES} if table == "sequences" else {}
    with run.stage(STAGE_OF[table], fingerprint="defect", config=config) as out:
        folder = out.table_dir(table)
        for index, rows in enumerate(partitions):
            schema = schema or SCHEMAS[table]
            if rows and set(rows[0]) != set(schema.names):
                schema = pa.schema([f for f in schema if f.name in rows[0]])
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / f"part-{index:05d}.parquet")
