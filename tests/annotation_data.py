"""Generated run folders for the annotation, filter and judge tests.

Realistic enough for the template annotator to ground on: themed catalogs (coffee, tea, chips,
flour, pens) with category paths, stores, prices and features; users whose history stays in
one theme, and every ``incoherent_every``-th user whose next item comes from another theme.
The tables are written the way the ingest and sequences stages write them (same schemas,
``RunDir.stage`` + ``write_part``), so the stages under test read them exactly as in a real run.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pyarrow as pa

from core.schemas import INTERACTIONS, ITEMS, SEQUENCES
from core.stage import RunDir
from core.tables import write_part

THEMES: dict[str, dict[str, Any]] = {
    "coffee": {
        "store": "Peak Roasters",
        "categories": ["Grocery & Gourmet Food", "Beverages", "Coffee, Tea & Cocoa", "Coffee"],
        "products": [
            "Dark Roast Whole Bean Coffee",
            "Colombian Medium Roast Ground Coffee",
            "Espresso Blend Coffee Pods",
            "French Roast Decaf Coffee",
            "Breakfast Blend Ground Coffee",
            "Cold Brew Coarse Ground Coffee",
        ],
        "price": (9.0, 22.0),
        "features": ["Arabica beans roasted in small batches", "Rich chocolate notes"],
    },
    "tea": {
        "store": "Leaf & Kettle",
        "categories": ["Grocery & Gourmet Food", "Beverages", "Coffee, Tea & Cocoa", "Tea"],
        "products": [
            "Organic Green Tea Bags",
            "Earl Grey Black Tea",
            "Chamomile Herbal Tea",
            "Jasmine Green Tea",
            "English Breakfast Black Tea",
            "Peppermint Herbal Tea",
        ],
        "price": (4.0, 9.0),
        "features": ["Individually wrapped tea bags", "Caffeine content varies by blend"],
    },
    "chips": {
        "store": "Crunch Valley",
        "categories": ["Grocery & Gourmet Food", "Snack Foods", "Chips & Crisps"],
        "products": [
            "Sea Salt Kettle Potato Chips",
            "Barbecue Kettle Potato Chips",
            "Sour Cream Onion Potato Chips",
            "Salt Vinegar Kettle Potato Chips",
            "Jalapeno Kettle Potato Chips",
            "Sweet Potato Kettle Chips",
        ],
        "price": (3.0, 8.0),
        "features": ["Kettle cooked in small batches", "Gluten free snack"],
    },
    "flour": {
        "store": "Golden Mill",
        "categories": ["Grocery & Gourmet Food", "Pantry Staples", "Baking", "Flours"],
        "products": [
            "Unbleached All-Purpose Flour",
            "Stone Ground Whole Wheat Flour",
            "Blanched Almond Flour",
            "Bread Flour High Protein",
            "Organic Rye Flour",
            "Self-Rising Baking Flour",
        ],
        "price": (5.0, 15.0),
        "features": ["Milled from hard red wheat", "Ideal for baking bread"],
    },
    "pens": {
        "store": "InkWorks",
        "categories": ["Office Products", "Office & School Supplies", "Writing & Correction Supplies", "Pens"],
        "products": [
            "Retractable Gel Pens Black",
            "Fine Point Ballpoint Pens Blue",
            "Felt Tip Marker Pens",
            "Fountain Pen Ink Cartridges",
            "Quick Dry Gel Ink Pens",
            "Erasable Gel Pens Assorted",
        ],
        "price": (6.0, 18.0),
        "features": ["Smooth writing gel ink", "Comfortable rubber grip"],
    },
}
SIZES = ["12 oz", "2 Pack", "24 Count", "1 lb", "6 Pack"]


def catalog(seed: int = 7) -> list[dict[str, Any]]:
    """Item rows (``items`` schema): every theme's products, each in two sizes."""
    rng = random.Random(seed)
    items = []
    for theme_index, (theme, spec) in enumerate(THEMES.items()):
        for product_index, product in enumerate(spec["products"]):
            for size_index in range(2):
                low, high = spec["price"]
                items.append(
                    {
                        "parent_asin": f"B0{theme_index}{product_index}{size_index}{rng.randrange(10**5):05d}",
                        "title": f"{spec['store']} {product}, {SIZES[(product_index + size_index) % len(SIZES)]}",
                        "main_category": spec["categories"][0],
                        "categories": spec["categories"],
                        "store": spec["store"],
                        "price": round(rng.uniform(low, high), 2),
                        "average_rating": 4.3,
                        "rating_number": 120,
                        "features": spec["features"],
                        "description": "",
                        "details": "{}",
                        "theme": theme,
                    }
                )
    return items


def sequences_rows(users: int, seed: int = 7, incoherent_every: int = 6, items: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Sequences rows: per user one train, one validation and one test example."""
    rng = random.Random(seed)
    items = items or catalog(seed)
    by_theme: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        by_theme.setdefault(item["theme"], []).append(item)
    themes = sorted(by_theme)
    rows = []
    for user in range(users):
        user_id = f"U{user:05d}"
        theme = themes[user % len(themes)]
        own = rng.sample(by_theme[theme], 8)
        if incoherent_every and user % incoherent_every == incoherent_every - 1:
            # An unrelated theme: not even the second category level in common (tea and coffee are both beverages).
            shifted = themes[themes.index(theme) + 2 :] + themes[: themes.index(theme) + 2]
            other = next(t for t in shifted if THEMES[t]["categories"][:2] != THEMES[theme]["categories"][:2])
            own[5] = rng.choice(by_theme[other])  # the train target comes from an unrelated theme
        timeline = [(item, 1_600_000_000_000 + step * 86_400_000, float(rng.choice([3, 4, 5, 5]))) for step, item in enumerate(own)]
        for split, target_position in (("train", 5), ("validation", 6), ("test", 7)):
            history = [
                {"parent_asin": item["parent_asin"], "title": item["title"], "rating": rating, "timestamp": ts}
                for item, ts, rating in timeline[:target_position]
            ]
            target_item, target_ts, target_rating = timeline[target_position]
            negatives = rng.sample([i for i in items if i["parent_asin"] not in {o["parent_asin"] for o in own}], 4)
            candidates = [{"parent_asin": i["parent_asin"], "title": i["title"]} for i in negatives]
            target_index = rng.randrange(len(candidates) + 1)
            candidates.insert(target_index, {"parent_asin": target_item["parent_asin"], "title": target_item["title"]})
            rows.append(
                {
                    "user_id": user_id,
                    "split": split,
                    "history": history,
                    "target": {
                        "parent_asin": target_item["parent_asin"],
                        "title": target_item["title"],
                        "categories": target_item["categories"],
                        "store": target_item["store"],
                        "rating": target_rating,
                        "timestamp": target_ts,
                    },
                    "candidates": candidates,
                    "target_index": target_index,
                }
            )
    return rows


def interactions_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One review per (user, history item) of the test rows (the longest history)."""
    out = []
    for row in rows:
        if row["split"] != "test":
            continue
        for line, item in enumerate(row["history"]):
            out.append(
                {
                    "user_id": row["user_id"],
                    "parent_asin": item["parent_asin"],
                    "asin": item["parent_asin"],
                    "rating": item["rating"],
                    "timestamp": item["timestamp"],
                    "review_title": "Would buy again" if item["rating"] >= 4 else "It was fine",
                    "review_text": "",
                    "helpful_vote": 0,
                    "verified_purchase": True,
                    "src_file": 0,
                    "src_line": line,
                }
            )
    return out


def write_sequences(run_path: Path, rows: list[dict[str, Any]], rows_per_part: int = 10_000) -> None:
    """Commit a ``sequences`` stage holding ``rows`` (split into part files)."""
    run = RunDir(run_path)
    with run.stage("sequences", fingerprint="test-sequences", config={"generated": True}) as out:
        folder = out.table_dir("sequences")
        for index, start in enumerate(range(0, max(len(rows), 1), rows_per_part)):
            write_part(pa.Table.from_pylist(rows[start : start + rows_per_part], schema=SEQUENCES), folder, index, SEQUENCES)
        out.record(rows_in=len(rows), rows_out={"sequences": len(rows)})


def write_ingest(run_path: Path, items: list[dict[str, Any]], interactions: list[dict[str, Any]]) -> None:
    """Commit an ``ingest`` stage with ``items`` and ``interactions`` tables."""
    run = RunDir(run_path)
    with run.stage("ingest", fingerprint="test-ingest", config={"generated": True}) as out:
        write_part(
            pa.Table.from_pylist([{k: v for k, v in i.items() if k != "theme"} for i in items], schema=ITEMS),
            out.table_dir("items"),
            0,
            ITEMS,
        )
        write_part(pa.Table.from_pylist(interactions, schema=INTERACTIONS), out.table_dir("interactions"), 0, INTERACTIONS)
        out.record(
            rows_in=len(interactions), rows_out={"items": len(items), "interactions": len(interactions)}, domain="Grocery_and_Gourmet_Food"
        )


def make_run(run_path: Path, users: int = 12, seed: int = 7, with_ingest: bool = True, rows_per_part: int = 10_000) -> list[dict[str, Any]]:
    """A run folder with sequences (and, by default, ingest tables); returns the sequences rows."""
    items = catalog(seed)
    rows = sequences_rows(users, seed, items=items)
    if with_ingest:
        write_ingest(run_path, items, interactions_rows(rows))
    write_sequences(run_path, rows, rows_per_part)
    return rows
