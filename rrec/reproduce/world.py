"""The known-answer world: a catalog and users whose next purchase follows three stated rules.

Items are the cross product of 10 product families, 6 stores and 3 price bands (180 items, one
per combination). An item's title is ``<Store> <noun> <name>``: the store and the family are
visible in the title, the price band is not (the ``<name>`` is a word drawn per item, unrelated
to the band); the band lives in the item's price in the metadata, as on Amazon.

Each user has a store they are loyal to and a price band. Their first item is random; every
next item follows, each rule independently with probability :data:`RULE_PROBABILITY`:

1. **follow-up family**: the family that follows the previous item's family in
   :data:`FOLLOW_UP` (coffee -> filters -> creamer -> ...), else a random family;
2. **store loyalty**: the user's store, else another store;
3. **price band**: the user's band, else another band.

So the next item is predictable from the history, and a rationale can state exactly why:
which family follows the last purchase, which store the history is loyal to and which price
band it keeps to (:func:`rule_rationale`). The world is written as raw Amazon Reviews 2023
files (reviews and metadata JSONL) so the project's own chain ingests, sequences and releases
it like any domain.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DOMAIN = "Known_Answer_World"
"""Domain name of the world's raw files; its release config is ``known_answer_world``."""

FAMILIES = ("coffee", "filters", "creamer", "sugar", "tea", "honey", "biscuits", "jam", "cereal", "milk")
FOLLOW_UP = {family: FAMILIES[(index + 1) % len(FAMILIES)] for index, family in enumerate(FAMILIES)}
"""The follow-up family of each family (a cycle: coffee -> filters -> creamer -> ... -> milk -> coffee)."""
STORES = ("Acme", "Birch", "Cobalt", "Delta", "Ember", "Fable")
BANDS = ("budget", "standard", "premium")
BAND_PRICES = {"budget": (2.0, 8.0), "standard": (10.0, 20.0), "premium": (28.0, 60.0)}
NAMES = (
    "Classic", "Select", "Harvest", "Golden", "Morning", "Orchard", "Meadow", "River", "Summit", "Coast",
    "Valley", "Prairie", "Garden", "Heritage", "Crest", "Grove", "Field", "Harbor", "Ridge", "Brook",
)  # fmt: skip
RULE_PROBABILITY = 0.8
MIN_LENGTH, MAX_LENGTH = 6, 10
_DAY_MS = 86_400_000
_START_MS = 1_577_836_800_000  # 2020-01-01


@dataclass(frozen=True)
class WorldItem:
    """One catalog item and the three attributes the rules act on."""

    parent_asin: str
    family: str
    store: str
    band: str
    title: str
    price: float


@dataclass(frozen=True)
class World:
    """The catalog (by parent_asin) and where its raw files were written."""

    items: dict[str, WorldItem]
    reviews_path: Path
    meta_path: Path
    users: int
    reviews: int


def build_catalog(seed: int) -> list[WorldItem]:
    """Every (family, store, band) item, with a seeded name word and price."""
    rng = random.Random(f"{seed}:catalog")
    items = []
    for family in FAMILIES:
        for store in STORES:
            names = rng.sample(NAMES, k=len(BANDS))
            for band, name in zip(BANDS, names):
                low, high = BAND_PRICES[band]
                index = len(items)
                items.append(
                    WorldItem(
                        parent_asin=f"K{index:09d}",
                        family=family,
                        store=store,
                        band=band,
                        title=f"{store} {family} {name}",
                        price=round(rng.uniform(low, high), 2),
                    )
                )
    return items


def _pick(rng: random.Random, preferred: str, options: Sequence[str]) -> str:
    if rng.random() < RULE_PROBABILITY:
        return preferred
    return rng.choice([option for option in options if option != preferred])


def user_sequence(rng: random.Random, by_key: Mapping[tuple[str, str, str], WorldItem]) -> list[WorldItem]:
    """One user's purchases in order, drawn by the three rules (repeats are redrawn at random)."""
    store, band = rng.choice(STORES), rng.choice(BANDS)
    length = rng.randint(MIN_LENGTH, MAX_LENGTH)
    sequence = [by_key[(rng.choice(FAMILIES), store, band)]]
    while len(sequence) < length:
        family = _pick(rng, FOLLOW_UP[sequence[-1].family], FAMILIES)
        item = by_key[(family, _pick(rng, store, STORES), _pick(rng, band, BANDS))]
        while item in sequence:  # a user reviews an item once: the rules give way
            item = by_key[(rng.choice(FAMILIES), rng.choice(STORES), rng.choice(BANDS))]
        sequence.append(item)
    return sequence


def _meta_record(item: WorldItem) -> dict[str, Any]:
    return {
        "main_category": "Grocery",
        "title": item.title,
        "average_rating": 4.5,
        "rating_number": 100,
        "features": [f"{item.family} from {item.store}"],
        "description": [f"{item.store} {item.family}."],
        "price": item.price,
        "images": [],
        "videos": [],
        "store": item.store,
        "categories": ["Grocery & Gourmet Food", item.family.capitalize()],
        "details": {"Brand": item.store},
        "parent_asin": item.parent_asin,
        "bought_together": None,
    }


def _review_records(seed: int, users: int, catalog: list[WorldItem]) -> Iterator[dict[str, Any]]:
    by_key = {(item.family, item.store, item.band): item for item in catalog}
    for index in range(users):
        rng = random.Random(f"{seed}:user:{index}")
        timestamp = _START_MS + rng.randrange(365) * _DAY_MS
        for item in user_sequence(rng, by_key):
            timestamp += rng.randrange(1, 30) * _DAY_MS
            yield {
                "rating": float(rng.choice((4, 5, 5))),
                "title": "Good",
                "text": f"Nice {item.family}.",
                "images": [],
                "asin": item.parent_asin,
                "parent_asin": item.parent_asin,
                "user_id": f"U{seed:04d}{index:07d}",
                "timestamp": timestamp,
                "helpful_vote": 0,
                "verified_purchase": True,
            }


def write_world(out_dir: Path, users: int, seed: int) -> World:
    """Write ``<DOMAIN>.jsonl`` and ``meta_<DOMAIN>.jsonl`` (raw Amazon 2023 format) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    catalog = build_catalog(seed)
    meta_path = out_dir / f"meta_{DOMAIN}.jsonl"
    meta_path.write_text("".join(json.dumps(_meta_record(item)) + "\n" for item in catalog), encoding="utf-8")
    reviews_path = out_dir / f"{DOMAIN}.jsonl"
    count = 0
    with reviews_path.open("w", encoding="utf-8") as handle:
        for record in _review_records(seed, users, catalog):
            handle.write(json.dumps(record) + "\n")
            count += 1
    return World({item.parent_asin: item for item in catalog}, reviews_path, meta_path, users, count)


def _majority(values: Sequence[str]) -> str:
    """The most frequent value; ties go to the most recent of the tied values."""
    counts = Counter(values)
    top = max(counts.values())
    return next(value for value in reversed(values) if counts[value] == top)


def rule_rationale(history: Sequence[WorldItem], target: WorldItem) -> str:
    """The world's teacher: why ``target`` follows ``history``, stated forward, rule by rule.

    ``history`` is what the student prompt shows (its last ``history_k`` items), so every fact
    the rationale states about the history can be read from the prompt. Evidence from the history first (the last family and its follow-up, the store most of the
    history comes from, the price band it keeps to), each compared with the target; the title
    itself is never named. A few dozen words, so a small model can learn to write it.
    """
    last = history[-1]
    store = _majority([item.store for item in history])
    band = _majority([item.band for item in history])
    follow = FOLLOW_UP[last.family]
    parts = [f"last bought {last.family} , and {follow} follows {last.family} ."]
    parts.append(f"so next is {follow} ." if target.family == follow else f"but this time {target.family} .")
    parts.append(
        f"mostly from {store} , stays with {store} ." if target.store == store else f"mostly from {store} , but tries {target.store} ."
    )
    parts.append(f"usually {band} , stays {band} ." if target.band == band else f"usually {band} , but goes {target.band} .")
    return " ".join(parts)


def oracle_item(history: Sequence[WorldItem], items: Mapping[str, WorldItem]) -> WorldItem:
    """The item the three rules predict after ``history`` (the known answer, for reference)."""
    store = _majority([item.store for item in history])
    band = _majority([item.band for item in history])
    family = FOLLOW_UP[history[-1].family]
    return next(item for item in items.values() if (item.family, item.store, item.band) == (family, store, band))
