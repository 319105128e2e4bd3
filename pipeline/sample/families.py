"""What a synthetic domain is made of: product families with follow-ups, brands, review phrases."""

from __future__ import annotations

from dataclasses import dataclass


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


def generic_vocab(domain: str) -> DomainVocab:
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
