"""The generator: ids, catalogs, users and their reviews, written as raw Amazon 2023 files."""

from __future__ import annotations

import gzip
import hashlib
import io
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
from pipeline.sample.families import DomainVocab, generic_vocab
from pipeline.sample.grocery import GROCERY
from pipeline.sample.office import OFFICE

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


DOMAIN_VOCABS = {"Grocery_and_Gourmet_Food": GROCERY, "Office_Products": OFFICE}


def vocab_for(domain: str) -> DomainVocab:
    """The vocabulary of ``domain``: hand-written for the project's domains, generic otherwise."""
    return DOMAIN_VOCABS.get(domain) or generic_vocab(domain)


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
        # A fixed gzip header (no file name, mtime 0): the same seed gives the same bytes,
        # whenever and under whichever temporary name the file is written.
        zipped = gzip.GzipFile(filename="", mode="wb", compresslevel=3, mtime=0, fileobj=open(path, "wb"))  # noqa: SIM115
        zipped.myfileobj = zipped.fileobj  # closed with the GzipFile, as when it opens the file itself
        return io.TextIOWrapper(zipped, encoding="utf-8")
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
