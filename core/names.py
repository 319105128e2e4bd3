"""Names built from input: domains, config names, and the paths made from them.

A domain name comes from a config file, a command line or a Hub id and becomes a folder
(``OUT/runs/<Domain>/``) and a release config (``grocery``, ``grocery_items``). Both must stay
inside the folder they are meant for and must not collide after normalisation, so every name is
checked here before any work starts: no path separators, no ``..``, no absolute paths, no
control characters, and no two domains whose configs (or item-catalog configs) coincide.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

SHORT_NAMES = {
    "Grocery_and_Gourmet_Food": "grocery",
    "Office_Products": "office",
}
"""Curated short config names of the domains the project is about; any other domain gets a slug."""
ITEMS_SUFFIX = "_items"
DOMAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.,&' -]{0,127}$")
"""Letters, digits and the punctuation of Amazon's category names; no separators."""


class UnsafeNameError(ValueError):
    """A name built from input that could escape its folder or collide with another."""


def check_domain_name(domain: str) -> str:
    """Return ``domain`` if it is safe as a folder name and a config source, else raise."""
    if not isinstance(domain, str) or not DOMAIN_NAME.match(domain) or ".." in domain or domain.strip() != domain:
        raise UnsafeNameError(
            f"domain name {domain!r} is not allowed: use letters, digits, spaces and _ . , & ' - only, "
            "starting with a letter or digit (no '/', '\\', '..' or absolute paths), at most 128 characters"
        )
    return domain


def config_name(domain: str) -> str:
    """Short config name of a domain.

    ``Grocery_and_Gourmet_Food`` -> ``grocery`` and ``Office_Products`` -> ``office``; any
    other domain is lower-cased with every run of non-alphanumeric characters turned into one
    underscore (``All_Beauty`` -> ``all_beauty``, ``Clothing, Shoes & Jewelry`` ->
    ``clothing_shoes_jewelry``).
    """
    if domain in SHORT_NAMES:
        return SHORT_NAMES[domain]
    slug = re.sub(r"[^a-z0-9]+", "_", domain.lower()).strip("_")
    if not slug:
        raise UnsafeNameError(f"domain name {domain!r} has no letters or digits to build a config name from")
    return slug


def items_config(config: str) -> str:
    """Name of the item-catalog config of a domain config."""
    return f"{config}{ITEMS_SUFFIX}"


def check_config_names(domains: Iterable[str]) -> dict[str, str]:
    """Config name of each domain; raise if two domains would write into the same config.

    Every domain owns two configs (``c`` and ``c_items``), so ``Foo`` and ``Foo_Items`` collide:
    the second's data config is the first's item catalog.
    """
    owners: dict[str, str] = {}
    configs: dict[str, str] = {}
    for domain in domains:
        config = config_name(check_domain_name(domain))
        for name in (config, items_config(config)):
            if name in owners and owners[name] != domain:
                raise UnsafeNameError(
                    f"domains {owners[name]!r} and {domain!r} both need the release config {name!r} "
                    f"(each domain D writes configs D and D{ITEMS_SUFFIX}); rename one of them"
                )
            owners[name] = domain
        configs[domain] = config
    return configs
