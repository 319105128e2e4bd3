"""Small, internally consistent run folders for the card and release tests.

They are written through the real stage contract (``RunDir.stage`` + ``write_part`` with the
schemas of ``pipeline/schemas.py``) with the manifest entries the real stages record, so the
release code reads them exactly as it reads a run made by ``rrec run``.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import pyarrow as pa
import typer

from core.hashing import fingerprint_of
from core.schemas import FILTERED, ITEMS, SEQUENCES
from core.stage import RunDir
from core.tables import write_part

CATEGORIES = ["Snacks", "Beverages", "Pantry Staples", "Candy & Chocolate", "Breakfast Foods"]


def asin(rng: random.Random) -> str:
    return "B" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(9))


def make_run(
    root: Path,
    domain: str = "Grocery_and_Gourmet_Food",
    users: int = 24,
    seed: int = 0,
    critical_failures: int = 0,
    with_validation: bool = True,
    with_judge: bool = True,
    extra_users: int = 0,
    source: dict | None = None,
    annotator: str = "template",
    model: str = "template-v1",
    judge_kind: str | None = None,
) -> Path:
    """A complete run folder of ``domain`` with ``users`` (+ ``extra_users``) users.

    ``source`` is the ingest entry's provenance record (omitted: a run from before it was
    recorded); ``annotator``/``model`` and ``judge_kind`` are what the annotate and judge entries
    record. Every fourth user's train rationale was rejected by the filter, so train has fewer rows than
    test. Users are derived from ``seed`` and their index, so a run with ``extra_users`` holds the
    same users as one without plus new ones.
    """
    run = root / domain
    catalog_rng = random.Random(f"{domain}-catalog")
    items = []
    for index in range(40):
        category = CATEGORIES[index % len(CATEGORIES)]
        items.append(
            {
                "parent_asin": asin(catalog_rng),
                "title": f"{category} item {index}",
                "main_category": "Grocery",
                "categories": ["Grocery & Gourmet Food", category, f"{category} sub"],
                "store": f"Store {index % 7}",
                "price": None if index % 5 == 0 else 2.5 + index,
                "average_rating": 4.0,
                "rating_number": 10 + index,
                "features": [f"feature {index}"],
                "description": f"A {category.lower()} product.",
                "details": json.dumps({"Weight": f"{index} oz"}),
            }
        )
    sequences, filtered = [], []
    for user_index in range(users + extra_users):
        rng = random.Random(f"{seed}-{domain}-{user_index}")
        user = f"U{user_index:05d}{domain[:3].upper()}"
        chosen = rng.sample(items, 6 + user_index % 4)
        stamps = sorted(rng.sample(range(1_600_000_000_000, 1_700_000_000_000, 1000), len(chosen)))
        events = [dict(item, timestamp=ts, rating=float(rng.randint(1, 5))) for item, ts in zip(chosen, stamps)]
        seen = {e["parent_asin"] for e in events}
        for split, cut in (("train", len(events) - 3), ("validation", len(events) - 2), ("test", len(events) - 1)):
            target = events[cut]
            negatives = rng.sample([i for i in items if i["parent_asin"] not in seen], 4)
            candidates = [{"parent_asin": target["parent_asin"], "title": target["title"]}] + [
                {"parent_asin": n["parent_asin"], "title": n["title"]} for n in negatives
            ]
            rng.shuffle(candidates)
            sequences.append(
                {
                    "user_id": user,
                    "split": split,
                    "history": [{k: e[k] for k in ("parent_asin", "title", "rating", "timestamp")} for e in events[:cut]],
                    "target": {k: target[k] for k in ("parent_asin", "title", "categories", "store", "rating", "timestamp")},
                    "candidates": candidates,
                    "target_index": [c["parent_asin"] for c in candidates].index(target["parent_asin"]),
                }
            )
            if split == "train" and user_index % 4 != 3:
                filtered.append(
                    {
                        "user_id": user,
                        "split": split,
                        "target_parent_asin": target["parent_asin"],
                        "rationale": f"After buying {events[cut - 1]['title']} the user keeps exploring {target['categories'][1].lower()}, so {target['title']} fits.",
                        "user_preferences": f"Likes {target['categories'][1].lower()}.",
                        "coherent": True,
                        "annotator": annotator,
                        "model": model,
                        "prompt_version": "teacher-v1",
                        "input_tokens": 120,
                        "output_tokens": 30,
                        "request_hash": f"h{user_index}",
                    }
                )
    rundir = RunDir(run)
    with rundir.stage(
        "ingest", fingerprint_of({"i": domain}), config={"domain": domain}, inputs={f"/data/{domain}.jsonl.gz": "abc123"}
    ) as out:
        write_part(pa.Table.from_pylist(items, schema=ITEMS), out.table_dir("items"), 0, ITEMS)
        out.record(
            rows_in=500,
            rows_out={"interactions": 480, "items": len(items)},
            rejects_by_reason={"invalid_json": 20},
            domain=domain,
            **({"source": source} if source is not None else {}),
        )
    seq_config = {"k": 5, "max_history": 50, "num_negatives": 4, "train_targets": "last", "seed": 42}
    with rundir.stage("sequences", fingerprint_of({"s": seed, "n": users + extra_users}), config=seq_config) as out:
        half = len(sequences) // 2
        write_part(pa.Table.from_pylist(sequences[:half], schema=SEQUENCES), out.table_dir("sequences"), 0, SEQUENCES)
        write_part(pa.Table.from_pylist(sequences[half:], schema=SEQUENCES), out.tmp_dir / "sequences", 1, SEQUENCES)
        out.record(
            rows_in=480,
            rows_out={"sequences": len(sequences)},
            rejects_by_reason={"kcore": 30},
            users_before_kcore=31,
            users_after_kcore=users + extra_users,
        )
    rejected = sum(1 for user_index in range(users + extra_users) if user_index % 4 == 3)
    reasons = {"annotator_incoherent": rejected - 1, "too_short": 1} if rejected > 1 else {"annotator_incoherent": rejected}
    annotated = len(filtered) + rejected
    with rundir.stage("annotate", fingerprint_of({"a": seed}), config={"annotator": annotator}) as out:
        out.record(
            rows_in=annotated,
            annotator=annotator,
            model=model,
            prompt_version="teacher-v1",
            input_tokens=120 * annotated,
            output_tokens=30 * annotated,
            cost_usd=0.0,
            splits=["train"],
        )
    with rundir.stage("filter", fingerprint_of({"f": seed, "n": users + extra_users}), config={}) as out:
        write_part(pa.Table.from_pylist(filtered, schema=FILTERED), out.table_dir("filtered"), 0, FILTERED)
        out.record(rows_in=annotated, rows_out={"filtered": len(filtered)}, rejects_by_reason=reasons)
    if with_judge:
        with rundir.stage("judge", fingerprint_of({"j": seed}), config={"sample": 10}) as out:
            out.record(
                judge="heuristic" if judge_kind in (None, "heuristic") else "gpt-4o",
                **({"judge_kind": judge_kind} if judge_kind else {}),
                score_distribution={"0": 1, "1": 2, "2": 3, "3": 4},
                mean_score=2.0,
                sample_size=10,
            )
    if with_validation:
        write_validation(run, critical_failures)
    return run


def write_validation(run: Path, critical_failures: int) -> None:
    """A validation result of the shape `rrec validate` writes, with ``critical_failures`` failures."""
    summary = {
        "run": str(Path(run).resolve()),  # rrec validate records where the run folder is
        "critical_failures": critical_failures,
        "success": critical_failures == 0,
        "suites": {"sequences": {"success": critical_failures == 0, "expectations": []}},
    }
    with RunDir(run).stage("validate", fingerprint_of({"v": critical_failures}), config={}) as out:
        folder = out.table_dir("validation")
        (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")


def rrec_commands() -> typer.Typer:
    """An ``rrec`` app with the card, release and pull commands, registered as the ``rrec`` CLI does."""
    from release.cli import register as register_release

    app = typer.Typer(pretty_exceptions_enable=False)
    register_release(app)
    return app
