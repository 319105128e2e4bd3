"""`rrec sample`: seeded synthetic domains in the exact raw Amazon Reviews 2023 format.

The generator is the embedded default data of the project. It writes, per domain,
``<Domain>.jsonl[.gz]`` (reviews) and ``meta_<Domain>.jsonl[.gz]`` (item metadata) with the
keys, key order and value types of the real release, and a structure a recommender can learn:

- items belong to product families (a category path, a noun, features, a price range) and
  families have follow-up relations (coffee -> filters -> creamer), so the next item is
  predictable from the last ones;
- users have latent tastes (favourite families, brands and a price band) that drive what they
  buy and how they rate it, so a rationale can be grounded in the history;
- the real data's defects are present: items without metadata, repeated (user, item) reviews,
  tied timestamps, ``asin != parent_asin`` for variants, HTML in review texts.

It streams: users are generated and written one at a time, so a full-size domain (14M reviews,
~6 GB) never sits in memory. Output is a pure function of (domain, settings).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import os
import random
from bisect import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from pydantic import Field

from core.cli_common import ConfigOpt, settings_for, user_errors
from core.config import StageSettings
from core.hashing import code_version
from core.names import check_domain_name
from core.progress import make_progress

log = logging.getLogger(__name__)

DEFAULT_DOMAINS = ("Grocery_and_Gourmet_Food", "Office_Products")
PROVENANCE_SUFFIX = ".provenance.json"
"""Suffix of the sidecar beside each generated review file: ``<reviews file name>.provenance.json``."""
_BASE36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ASIN_SPACE = 36**8
_ASIN_MULTIPLIER = 2_654_435_761  # coprime with 36, so index -> id is a bijection
_DAY_MS = 86_400_000
_START_MS = 1_420_070_400_000  # 2015-01-01
_SPAN_DAYS = 8 * 365


class SampleSettings(StageSettings):
    """Settings of `rrec sample` (config section ``sample``)."""

    domains: list[str] = Field(default_factory=lambda: list(DEFAULT_DOMAINS))
    users: int = Field(3000, ge=1, description="users per domain")
    items: int | None = Field(None, ge=20, description="items per domain (default: users / 2.5, at least 200)")
    mean_reviews: float = Field(9.0, ge=5.0, description="mean reviews per user")
    seed: int = 42
    gzip: bool = False

    def item_count(self) -> int:
        return self.items or max(200, int(self.users / 2.5))


@dataclass(frozen=True)
class Family:
    """A product family: what its items are called, where they sit, what follows them."""

    name: str
    path: tuple[str, ...]
    nouns: tuple[str, ...]
    features: tuple[str, ...]
    price: tuple[float, float]
    follow_ups: tuple[str, ...] = ()


@dataclass(frozen=True)
class DomainVocab:
    main_category: str
    families: tuple[Family, ...]
    brands: tuple[str, ...]
    adjectives: tuple[str, ...]
    sizes: tuple[str, ...]
    praise: tuple[str, ...]
    complaints: tuple[str, ...]


_G = ("Grocery & Gourmet Food",)
GROCERY = DomainVocab(
    main_category="Grocery",
    families=(
        Family(
            "coffee",
            (*_G, "Beverages", "Coffee, Tea & Cocoa", "Coffee", "Ground Coffee"),
            ("Ground Coffee", "Whole Bean Coffee", "Espresso Roast"),
            ("medium roast", "100% arabica", "rich aroma", "fair trade", "low acidity"),
            (7, 24),
            ("coffee_filters", "creamer", "sweetener"),
        ),
        Family(
            "coffee_filters",
            (*_G, "Beverages", "Coffee, Tea & Cocoa", "Coffee", "Coffee Filters"),
            ("Coffee Filters", "Cone Filters"),
            ("unbleached", "compostable", "fits 8-12 cup makers"),
            (3, 9),
            ("coffee", "creamer"),
        ),
        Family(
            "creamer",
            (*_G, "Dairy, Cheese & Eggs", "Milk & Cream", "Coffee Creamer"),
            ("Coffee Creamer", "Oat Milk Creamer"),
            ("vanilla flavor", "dairy free", "shelf stable"),
            (3, 11),
            ("coffee", "sweetener"),
        ),
        Family(
            "sweetener",
            (*_G, "Cooking & Baking", "Sugars & Sweeteners", "Sugar Substitutes"),
            ("Stevia Sweetener", "Monk Fruit Sweetener"),
            ("zero calorie", "keto friendly", "no aftertaste"),
            (5, 14),
            ("tea", "coffee"),
        ),
        Family(
            "tea",
            (*_G, "Beverages", "Coffee, Tea & Cocoa", "Tea", "Green Tea"),
            ("Green Tea Bags", "Herbal Tea", "Earl Grey Tea"),
            ("organic", "caffeine free", "individually wrapped"),
            (4, 15),
            ("honey", "sweetener"),
        ),
        Family(
            "honey",
            (*_G, "Breakfast Foods", "Honey & Syrups", "Honey"),
            ("Raw Honey", "Manuka Honey", "Clover Honey"),
            ("unfiltered", "squeeze bottle", "pure"),
            (6, 28),
            ("tea", "oatmeal"),
        ),
        Family(
            "pasta",
            (*_G, "Pantry Staples", "Pasta & Noodles", "Dry Pasta"),
            ("Spaghetti", "Penne Rigate", "Fusilli"),
            ("bronze cut", "durum wheat", "imported from Italy"),
            (2, 9),
            ("pasta_sauce", "parmesan"),
        ),
        Family(
            "pasta_sauce",
            (*_G, "Pantry Staples", "Canned & Jarred Food", "Pasta Sauces"),
            ("Marinara Sauce", "Tomato Basil Sauce", "Arrabbiata Sauce"),
            ("no sugar added", "slow simmered", "San Marzano tomatoes"),
            (4, 12),
            ("parmesan", "olive_oil"),
        ),
        Family(
            "parmesan",
            (*_G, "Dairy, Cheese & Eggs", "Cheese", "Parmesan"),
            ("Grated Parmesan", "Parmigiano Reggiano"),
            ("aged 24 months", "shelf stable", "resealable"),
            (5, 18),
            ("pasta", "olive_oil"),
        ),
        Family(
            "olive_oil",
            (*_G, "Pantry Staples", "Cooking Oils", "Olive Oil"),
            ("Extra Virgin Olive Oil", "Olive Oil Spray"),
            ("cold pressed", "single origin", "dark glass bottle"),
            (8, 30),
            ("spices", "pasta"),
        ),
        Family(
            "spices",
            (*_G, "Pantry Staples", "Herbs, Spices & Seasonings", "Mixed Spices"),
            ("Italian Seasoning", "Smoked Paprika", "Garlic Powder"),
            ("non GMO", "salt free", "grinder top"),
            (3, 12),
            ("olive_oil", "hot_sauce"),
        ),
        Family(
            "hot_sauce",
            (*_G, "Pantry Staples", "Condiments & Salad Dressings", "Hot Sauce"),
            ("Hot Sauce", "Sriracha", "Chili Crisp"),
            ("extra hot", "small batch", "fermented peppers"),
            (4, 13),
            ("chips", "salsa"),
        ),
        Family(
            "chips",
            (*_G, "Snack Foods", "Chips & Crisps", "Tortilla Chips"),
            ("Tortilla Chips", "Kettle Potato Chips", "Veggie Chips"),
            ("sea salt", "gluten free", "family size"),
            (3, 10),
            ("salsa", "hot_sauce"),
        ),
        Family(
            "salsa",
            (*_G, "Pantry Staples", "Condiments & Salad Dressings", "Salsa"),
            ("Chunky Salsa", "Salsa Verde"),
            ("medium heat", "fire roasted", "no preservatives"),
            (3, 9),
            ("chips",),
        ),
        Family(
            "flour",
            (*_G, "Cooking & Baking", "Flours & Meals", "All-Purpose Flour"),
            ("All-Purpose Flour", "Almond Flour", "Bread Flour"),
            ("unbleached", "stone ground", "5 lb bag"),
            (4, 16),
            ("chocolate_chips", "vanilla"),
        ),
        Family(
            "chocolate_chips",
            (*_G, "Cooking & Baking", "Baking Chocolates", "Chocolate Chips"),
            ("Semi-Sweet Chocolate Chips", "Dark Chocolate Chunks"),
            ("fair trade cocoa", "dairy free", "72% cacao"),
            (4, 14),
            ("vanilla", "flour"),
        ),
        Family(
            "vanilla",
            (*_G, "Cooking & Baking", "Extracts & Flavoring", "Vanilla Extract"),
            ("Pure Vanilla Extract", "Vanilla Bean Paste"),
            ("Madagascar bourbon", "alcohol free", "4 fl oz"),
            (6, 25),
            ("flour", "chocolate_chips"),
        ),
        Family(
            "oatmeal",
            (*_G, "Breakfast Foods", "Cereals", "Oatmeal"),
            ("Rolled Oats", "Instant Oatmeal", "Steel Cut Oats"),
            ("whole grain", "high fiber", "no added sugar"),
            (3, 12),
            ("honey", "nuts"),
        ),
        Family(
            "nuts",
            (*_G, "Snack Foods", "Nuts & Seeds", "Mixed Nuts"),
            ("Roasted Almonds", "Mixed Nuts", "Cashews"),
            ("lightly salted", "resealable bag", "protein rich"),
            (6, 22),
            ("protein_bars", "oatmeal"),
        ),
        Family(
            "protein_bars",
            (*_G, "Snack Foods", "Bars", "Protein Bars"),
            ("Protein Bars", "Nut Butter Bars"),
            ("20g protein", "low sugar", "gluten free"),
            (12, 30),
            ("nuts", "sparkling_water"),
        ),
        Family(
            "sparkling_water",
            (*_G, "Beverages", "Bottled Beverages, Water & Drink Mixes", "Sparkling Water"),
            ("Sparkling Water", "Flavored Seltzer"),
            ("zero calories", "natural lime flavor", "12 pack cans"),
            (5, 16),
            ("protein_bars", "chips"),
        ),
    ),
    brands=(
        "Harvest Lane",
        "Blue Mesa",
        "Old Orchard Pantry",
        "Casa Verde",
        "Northwind Roasters",
        "Golden Hive",
        "Pacific Pantry",
        "Little Acre",
        "Mountain Peak Foods",
        "Bella Tavola",
        "Sunny Fields",
        "True Grain",
        "Red Ember",
        "Coastal Kitchen",
        "Wild Meadow",
        "Urban Spoon",
    ),
    adjectives=("Organic", "Premium", "Classic", "Artisan", "Everyday", "Gourmet", "Natural", "Family Size", "Original", "Bold"),
    sizes=("8 oz", "12 oz", "16 oz", "24 oz", "2 lb", "Pack of 2", "Pack of 6", "32 oz"),
    praise=(
        "tastes great",
        "is fresh and flavorful",
        "is my new pantry staple",
        "arrived well packed",
        "is a great value for the price",
        "is loved by the whole family",
    ),
    complaints=("arrived stale", "is too salty for me", "came in a damaged package", "tastes bland", "is not worth the price"),
)

_O = ("Office Products",)
OFFICE = DomainVocab(
    main_category="Office Products",
    families=(
        Family(
            "printer_paper",
            (*_O, "Office & School Supplies", "Paper", "Copy & Multipurpose Paper"),
            ("Copy Paper", "Multipurpose Printer Paper"),
            ("8.5 x 11 inches", "92 bright", "20 lb", "500 sheets per ream"),
            (6, 45),
            ("ink", "stapler"),
        ),
        Family(
            "ink",
            (*_O, "Office Electronics", "Printers & Accessories", "Ink Cartridges"),
            ("Ink Cartridge", "Toner Cartridge", "Ink Combo Pack"),
            ("high yield", "black and tri-color", "compatible replacement"),
            (15, 60),
            ("printer_paper", "labels"),
        ),
        Family(
            "stapler",
            (*_O, "Office & School Supplies", "Desk Accessories", "Staplers"),
            ("Desktop Stapler", "Electric Stapler"),
            ("20 sheet capacity", "jam free", "includes staples"),
            (8, 35),
            ("staples", "file_folders"),
        ),
        Family(
            "staples",
            (*_O, "Office & School Supplies", "Desk Accessories", "Staples"),
            ("Standard Staples", "Heavy Duty Staples"),
            ("5000 count", "1/4 inch leg", "chisel point"),
            (2, 9),
            ("stapler",),
        ),
        Family(
            "notebooks",
            (*_O, "Office & School Supplies", "Paper", "Notebooks & Writing Pads"),
            ("Spiral Notebook", "Composition Notebook", "Dotted Journal"),
            ("college ruled", "120 sheets", "perforated pages"),
            (4, 18),
            ("gel_pens", "highlighters"),
        ),
        Family(
            "gel_pens",
            (*_O, "Office & School Supplies", "Writing & Correction Supplies", "Gel Pens"),
            ("Gel Pens", "Retractable Gel Pens", "Fine Point Pens"),
            ("0.7 mm", "quick drying", "assorted colors"),
            (5, 20),
            ("notebooks", "highlighters"),
        ),
        Family(
            "highlighters",
            (*_O, "Office & School Supplies", "Writing & Correction Supplies", "Highlighters"),
            ("Highlighters", "Pastel Highlighters"),
            ("chisel tip", "smear guard", "12 count"),
            (4, 14),
            ("sticky_notes", "notebooks"),
        ),
        Family(
            "sticky_notes",
            (*_O, "Office & School Supplies", "Paper", "Sticky Notes"),
            ("Sticky Notes", "Page Flags"),
            ("3 x 3 inches", "super sticky", "recyclable"),
            (3, 15),
            ("highlighters", "desk_organizer"),
        ),
        Family(
            "file_folders",
            (*_O, "Office & School Supplies", "Filing Products", "File Folders"),
            ("File Folders", "Hanging File Folders"),
            ("letter size", "1/3 cut tabs", "100 per box"),
            (8, 30),
            ("labels", "file_box"),
        ),
        Family(
            "labels",
            (*_O, "Office & School Supplies", "Labels, Indexes & Stamps", "Labels"),
            ("Address Labels", "File Folder Labels", "Shipping Labels"),
            ("laser and inkjet", "permanent adhesive", "1 x 2-5/8 inches"),
            (7, 28),
            ("label_tape", "envelopes"),
        ),
        Family(
            "label_tape",
            (*_O, "Office Electronics", "Label Makers", "Label Tapes"),
            ("Label Maker Tape", "Laminated Label Tape"),
            ("black on white", "12 mm", "water resistant"),
            (9, 25),
            ("labels",),
        ),
        Family(
            "file_box",
            (*_O, "Office & School Supplies", "Filing Products", "File Boxes"),
            ("File Storage Box", "Portable File Box"),
            ("stackable", "lift-off lid", "letter and legal"),
            (15, 45),
            ("file_folders",),
        ),
        Family(
            "envelopes",
            (*_O, "Office & School Supplies", "Envelopes & Mailing Supplies", "Envelopes"),
            ("Security Envelopes", "Padded Mailers"),
            ("self seal", "#10 size", "tinted interior"),
            (8, 30),
            ("labels", "packing_tape"),
        ),
        Family(
            "packing_tape",
            (*_O, "Office & School Supplies", "Tape, Adhesives & Fasteners", "Packing Tape"),
            ("Packing Tape", "Tape Gun Refill"),
            ("1.88 inch x 55 yards", "heavy duty", "clear"),
            (6, 22),
            ("envelopes",),
        ),
        Family(
            "whiteboard",
            (*_O, "Office & School Supplies", "Presentation Supplies", "Dry Erase Boards"),
            ("Dry Erase Board", "Magnetic Whiteboard"),
            ("aluminum frame", "36 x 24 inches", "ghost resistant"),
            (20, 80),
            ("dry_erase_markers", "eraser"),
        ),
        Family(
            "dry_erase_markers",
            (*_O, "Office & School Supplies", "Presentation Supplies", "Dry Erase Markers"),
            ("Dry Erase Markers", "Fine Tip Whiteboard Markers"),
            ("low odor", "assorted colors", "chisel tip"),
            (6, 20),
            ("eraser", "whiteboard"),
        ),
        Family(
            "eraser",
            (*_O, "Office & School Supplies", "Presentation Supplies", "Dry Erase Erasers"),
            ("Whiteboard Eraser", "Microfiber Eraser"),
            ("washable", "magnetic back"),
            (4, 12),
            ("dry_erase_markers",),
        ),
        Family(
            "desk_organizer",
            (*_O, "Office & School Supplies", "Desk Accessories", "Desk Organizers"),
            ("Desk Organizer", "Mesh Pencil Cup", "Drawer Organizer"),
            ("5 compartments", "metal mesh", "space saving"),
            (10, 40),
            ("sticky_notes", "calculator"),
        ),
        Family(
            "calculator",
            (*_O, "Office Electronics", "Calculators", "Basic Calculators"),
            ("Desktop Calculator", "Scientific Calculator"),
            ("solar and battery", "12 digit display", "large buttons"),
            (8, 30),
            ("desk_organizer", "notebooks"),
        ),
    ),
    brands=(
        "Paperline",
        "Inkwell Co",
        "DeskCraft",
        "OfficeMate Pro",
        "Clearmark",
        "Northfield Stationery",
        "Brightwork",
        "StapleRight",
        "Archive & Co",
        "Penworth",
        "Vantage Office",
        "Metro Supply",
        "Lumen Labs",
        "Scribe House",
    ),
    adjectives=("Professional", "Premium", "Heavy Duty", "Eco", "Classic", "Compact", "Value Pack", "Ultra", "Everyday", "Deluxe"),
    sizes=("Pack of 12", "Pack of 24", "1 Count", "3 Pack", "Box of 100", "2 Pack", "500 Sheets"),
    praise=(
        "works exactly as described",
        "is great quality for the office",
        "feels sturdy and well made",
        "is a must for my home office",
        "is a good value",
        "has given me no trouble so far",
    ),
    complaints=(
        "broke after a week",
        "feels cheaply made",
        "looks different from the photos",
        "arrived damaged",
        "stopped working quickly",
    ),
)

DOMAIN_VOCABS = {"Grocery_and_Gourmet_Food": GROCERY, "Office_Products": OFFICE}


def _generic_vocab(domain: str) -> DomainVocab:
    """A plain vocabulary for a domain without a hand-written one (any Amazon 2023 name works)."""
    label = domain.replace("_and_", " & ").replace("_", " ")
    names = [f"{label} Line {chr(65 + i)}" for i in range(12)]
    families = tuple(
        Family(
            f"family_{i}",
            (label, f"{label} Essentials", names[i]),
            (f"{names[i]} Item", f"{names[i]} Kit"),
            ("durable", "easy to use", "compact design", "great value"),
            (5.0 + 3 * i, 20.0 + 6 * i),
            (f"family_{(i + 1) % 12}", f"family_{(i + 5) % 12}"),
        )
        for i in range(12)
    )
    return DomainVocab(
        main_category=label,
        families=families,
        brands=tuple(f"{label.split()[0]} Brand {i}" for i in range(12)),
        adjectives=("Premium", "Classic", "Everyday", "Deluxe", "Compact", "Original"),
        sizes=("1 Count", "2 Pack", "Pack of 6", "Large"),
        praise=("works as described", "good quality", "great value", "would buy again"),
        complaints=("broke quickly", "not as pictured", "poor quality"),
    )


def vocab_for(domain: str) -> DomainVocab:
    return DOMAIN_VOCABS.get(domain) or _generic_vocab(domain)


def _base36(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 36)
        chars.append(_BASE36[digit])
    return "".join(reversed(chars))


def _domain_salt(domain: str) -> int:
    return int.from_bytes(hashlib.blake2b(domain.encode(), digest_size=4).digest(), "big")


def item_asin(domain: str, index: int, variant: int = 0) -> str:
    """A unique, stable, Amazon-shaped id (``B0`` + 8 of [0-9A-Z]) for item ``index`` of a domain."""
    code = (index * 4 + variant) * _ASIN_MULTIPLIER + _domain_salt(domain)
    return "B0" + _base36(code % _ASIN_SPACE, 8)


def user_id(seed: int, domain: str, index: int) -> str:
    digest = hashlib.blake2b(f"{seed}:{domain}:{index}".encode(), digest_size=20).digest()
    return "A" + _base36(int.from_bytes(digest, "big"), 27)


@dataclass
class Item:
    index: int
    parent_asin: str
    family: int
    brand: int
    title: str
    price: float
    features: list[str]
    variants: int
    has_meta: bool


@dataclass(frozen=True)
class DomainReport:
    domain: str
    reviews_path: Path
    meta_path: Path
    users: int
    items: int
    items_with_meta: int
    reviews: int


class _Catalog:
    """Items of one domain with the per-family, popularity-weighted samplers the users draw from."""

    def __init__(self, domain: str, vocab: DomainVocab, n_items: int, rng: random.Random):
        self.vocab = vocab
        self.family_index = {family.name: i for i, family in enumerate(vocab.families)}
        self.items: list[Item] = []
        by_family: list[list[int]] = [[] for _ in vocab.families]
        by_family_brand: dict[tuple[int, int], list[int]] = {}
        for index in range(n_items):
            family_id = index % len(vocab.families)
            family = vocab.families[family_id]
            brand = rng.randrange(len(vocab.brands))
            noun = rng.choice(family.nouns)
            low, high = family.price
            title = f"{vocab.brands[brand]} {rng.choice(vocab.adjectives)} {noun}, {rng.choice(family.features).title()}, {rng.choice(vocab.sizes)}"
            item = Item(
                index=index,
                parent_asin=item_asin(domain, index),
                family=family_id,
                brand=brand,
                title=title,
                price=round(rng.uniform(low, high), 2),
                features=rng.sample(list(family.features), k=min(3, len(family.features))),
                variants=1 if rng.random() < 0.8 else rng.randint(2, 3),
                has_meta=rng.random() >= 0.03,
            )
            self.items.append(item)
            by_family[family_id].append(index)
            by_family_brand.setdefault((family_id, brand), []).append(index)
        # Zipf-like popularity inside each family: a few hits, a long tail.
        self._family_items = by_family
        self._family_weights = [list(accumulate(1.0 / (rank + 1) ** 0.9 for rank in range(len(ids)))) for ids in by_family]
        self._family_brand = by_family_brand
        self._global_weights = list(accumulate(1.0 / (rank + 1) ** 0.8 for rank in range(n_items)))
        self._global_order = list(range(n_items))
        rng.shuffle(self._global_order)

    def from_family(self, family: int, rng: random.Random, brand: int | None = None, price_band: float | None = None) -> Item:
        if brand is not None and (family, brand) in self._family_brand and rng.random() < 0.6:
            return self.items[rng.choice(self._family_brand[(family, brand)])]
        ids, weights = self._family_items[family], self._family_weights[family]
        pick = self.items[ids[bisect(weights, rng.random() * weights[-1])]]
        if price_band is not None and rng.random() < 0.5:
            # A second draw closer to the user's price band, if the first one is far off it.
            other = self.items[ids[bisect(weights, rng.random() * weights[-1])]]
            low, high = self.vocab.families[family].price
            target = low + price_band * (high - low)
            if abs(other.price - target) < abs(pick.price - target):
                pick = other
        return pick

    def popular(self, rng: random.Random) -> Item:
        weights = self._global_weights
        return self.items[self._global_order[bisect(weights, rng.random() * weights[-1])]]


def _review_text(item: Item, vocab: DomainVocab, rating: float, rng: random.Random, prior: Item | None) -> tuple[str, str]:
    family = vocab.families[item.family]
    noun = family.nouns[0].lower()
    if rating >= 4:
        title = rng.choice(("Love it", "Great product", "Five stars", "Excellent", "Will buy again", f"Best {noun} so far"))
        parts = [f"This {noun} {rng.choice(vocab.praise)}.", f"Key point for me: {rng.choice(family.features)}."]
    elif rating >= 3:
        title = rng.choice(("It's okay", "Decent", "Average", "Not bad"))
        parts = [f"The {noun} is fine but {rng.choice(vocab.complaints)}.", "Might try another brand next time."]
    else:
        title = rng.choice(("Disappointed", "Would not recommend", "Not good", "One star"))
        parts = [f"Sadly this {noun} {rng.choice(vocab.complaints)}.", "I returned it."]
    if prior is not None and rng.random() < 0.4:
        parts.append(f"Goes well with the {vocab.families[prior.family].nouns[0].lower()} I bought earlier.")
    if rng.random() < 0.15:
        # Real review texts carry HTML line breaks and entities.
        return title, "<br />".join(parts).replace(" and ", " &amp; ", 1)
    return title, " ".join(parts)


def _meta_record(item: Item, vocab: DomainVocab, rng: random.Random) -> dict[str, Any]:
    family = vocab.families[item.family]
    brand = vocab.brands[item.brand]
    return {
        "main_category": vocab.main_category,
        "title": item.title,
        "average_rating": round(rng.uniform(3.2, 4.9), 1),
        "rating_number": rng.randint(3, 25_000),
        "features": [feature.capitalize() for feature in item.features],
        "description": [f"{brand} {family.nouns[0]}: {', '.join(item.features)}."],
        "price": item.price if rng.random() >= 0.05 else None,
        "images": [
            {
                "thumb": f"https://m.media-amazon.com/images/I/{item.parent_asin}._SS40_.jpg",
                "large": f"https://m.media-amazon.com/images/I/{item.parent_asin}.jpg",
                "variant": "MAIN",
                "hi_res": None,
            }
        ],
        "videos": [],
        "store": brand,
        "categories": list(family.path),
        "details": {"Brand": brand, "Manufacturer": brand, "Item Form": family.nouns[0], "Date First Available": "January 1, 2015"},
        "parent_asin": item.parent_asin,
        "bought_together": None,
    }


@dataclass
class _User:
    families: list[int]
    brands: list[int]
    price_band: float


def _user_reviews(
    seed: int, domain: str, index: int, catalog: _Catalog, settings: SampleSettings, rng: random.Random
) -> Iterator[dict[str, Any]]:
    vocab = catalog.vocab
    n_families = len(vocab.families)
    taste = _User(
        families=rng.sample(range(n_families), k=min(3, n_families)),
        brands=rng.sample(range(len(vocab.brands)), k=min(2, len(vocab.brands))),
        price_band=rng.random(),
    )
    # 3 + floor(Exp(mean m)) has mean ~ 3 + m - 0.5, so m is chosen to hit ``mean_reviews``.
    length = 3 + min(200, int(rng.expovariate(1.0 / (settings.mean_reviews - 2.5))))
    uid = user_id(seed, domain, index)
    timestamp = _START_MS + rng.randrange(_SPAN_DAYS) * _DAY_MS + rng.randrange(_DAY_MS)
    previous: Item | None = None
    bought: list[Item] = []
    for _ in range(length):
        roll = rng.random()
        if previous is not None and roll < 0.55:
            follow = vocab.families[previous.family].follow_ups
            family = catalog.family_index.get(rng.choice(follow), previous.family) if follow else previous.family
            item = catalog.from_family(family, rng, rng.choice(taste.brands), taste.price_band)
        elif roll < 0.85:
            item = catalog.from_family(rng.choice(taste.families), rng, rng.choice(taste.brands), taste.price_band)
        else:
            item = catalog.popular(rng)
        if bought and rng.random() < 0.02:
            item = rng.choice(bought)  # a repeated (user, item) review
        liked = (item.brand in taste.brands) + (item.family in taste.families)
        rating = float(min(5, max(1, round(rng.gauss(3.4 + 0.6 * liked, 0.9)))))
        if rng.random() >= 0.03:  # 3% tie with the previous review
            timestamp += rng.randrange(1, 40) * _DAY_MS // 4 + rng.randrange(1000)
        title, text = _review_text(item, vocab, rating, rng, previous)
        variant = rng.randrange(item.variants)
        yield {
            "rating": rating,
            "title": title,
            "text": text,
            "images": [],
            "asin": item_asin(domain, item.index, variant) if variant else item.parent_asin,
            "parent_asin": item.parent_asin,
            "user_id": uid,
            "timestamp": timestamp,
            "helpful_vote": int(rng.expovariate(0.7)),
            "verified_purchase": rng.random() < 0.9,
        }
        previous = item
        bought.append(item)


def _open(path: Path, use_gzip: bool) -> IO[str]:
    if use_gzip:
        return gzip.open(path, "wt", encoding="utf-8", compresslevel=3)
    return open(path, "w", encoding="utf-8")


def _write_atomically(path: Path, use_gzip: bool, lines: Iterator[str]) -> int:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    count = 0
    with _open(tmp, use_gzip) as handle:
        for line in lines:
            handle.write(line)
            handle.write("\n")
            count += 1
    tmp.replace(path)
    return count


def generate_domain(out_dir: Path, domain: str, settings: SampleSettings) -> DomainReport:
    """Write one domain's review and meta files; returns where they are and what they hold."""
    check_domain_name(domain)  # it becomes a file name: nothing may escape out_dir
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = ".jsonl.gz" if settings.gzip else ".jsonl"
    reviews_path = out_dir / f"{domain}{suffix}"
    meta_path = out_dir / f"meta_{domain}{suffix}"
    vocab = vocab_for(domain)
    catalog_rng = random.Random(f"{settings.seed}:{domain}:catalog")
    catalog = _Catalog(domain, vocab, settings.item_count(), catalog_rng)

    meta_rng = random.Random(f"{settings.seed}:{domain}:meta")
    meta_lines = (json.dumps(_meta_record(item, vocab, meta_rng)) for item in catalog.items if item.has_meta)
    items_with_meta = _write_atomically(meta_path, settings.gzip, meta_lines)

    review_rng = random.Random(f"{settings.seed}:{domain}:reviews")

    def review_lines() -> Iterator[str]:
        with make_progress() as progress:
            task = progress.add_task(f"sample {domain}", total=settings.users)
            for index in range(settings.users):
                for review in _user_reviews(settings.seed, domain, index, catalog, settings, review_rng):
                    yield json.dumps(review)
                progress.advance(task)

    n_reviews = _write_atomically(reviews_path, settings.gzip, review_lines())
    write_provenance(reviews_path, domain, settings)
    log.info(
        "%s: %d reviews of %d users, %d items (%d with metadata) -> %s",
        domain,
        n_reviews,
        settings.users,
        len(catalog.items),
        items_with_meta,
        out_dir,
    )
    return DomainReport(domain, reviews_path, meta_path, settings.users, len(catalog.items), items_with_meta, n_reviews)


def provenance_path(reviews_path: Path) -> Path:
    """Where the provenance sidecar of a review file lives: ``<reviews file name>.provenance.json`` beside it."""
    return reviews_path.with_name(reviews_path.name + PROVENANCE_SUFFIX)


def sample_provenance(domain: str, settings: SampleSettings) -> dict[str, Any]:
    """What made a generated review file: synthetic data, this generator, its code, seed and settings."""
    return {
        "kind": "synthetic",
        "generator": "rrec sample",
        "code_version": code_version(),
        "domain": domain,
        "seed": settings.seed,
        "settings": settings.model_dump(mode="json"),
    }


def write_provenance(reviews_path: Path, domain: str, settings: SampleSettings) -> Path:
    """Write the sidecar that tells later stages (and the dataset card) this review file is synthetic."""
    path = provenance_path(reviews_path)
    text = json.dumps(sample_provenance(domain, settings), indent=2, sort_keys=True) + "\n"
    _write_atomically(path, False, iter([text.rstrip("\n")]))
    return path


def generate_domains(out_dir: Path, settings: SampleSettings) -> list[DomainReport]:
    """Write every domain of ``settings.domains`` into ``out_dir``."""
    return [generate_domain(out_dir, domain, settings) for domain in settings.domains]


def users_for_reviews(reviews: int, mean_reviews: float = 9.0) -> int:
    """How many users give about ``reviews`` reviews (for sizing benchmark domains)."""
    return max(1, math.ceil(reviews / mean_reviews))


def register(app: typer.Typer) -> None:
    @app.command("sample")
    @user_errors
    def sample_command(
        out: Annotated[Path, typer.Option("--out", help="Folder that receives <Domain>.jsonl[.gz] and meta_<Domain>.jsonl[.gz].")],
        domains: Annotated[str | None, typer.Option("--domains", help="Comma-separated Amazon 2023 domain names.")] = None,
        users: Annotated[int | None, typer.Option("--users", help="Users per domain (default 3000).", min=1)] = None,
        items: Annotated[int | None, typer.Option("--items", help="Items per domain (default users / 2.5).", min=20)] = None,
        seed: Annotated[int | None, typer.Option("--seed", help="Random seed; same seed, same files.")] = None,
        gzip_output: Annotated[bool | None, typer.Option("--gzip/--no-gzip", help="Write .jsonl.gz instead of .jsonl.")] = None,
        config: ConfigOpt = None,
    ) -> None:
        """Generate the embedded default data: synthetic domains in the raw Amazon Reviews 2023 format."""
        domain_list = [d.strip() for d in domains.split(",") if d.strip()] if domains else None
        settings, _ = settings_for(
            config, "sample", SampleSettings, domains=domain_list, users=users, items=items, seed=seed, gzip=gzip_output
        )
        for report in generate_domains(out, settings):
            typer.echo(
                f"{report.domain}: {report.reviews:,} reviews, {report.items:,} items ({report.items_with_meta:,} with metadata) -> {report.reviews_path}"
            )
