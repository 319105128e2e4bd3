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

from pipeline.sample.generator import (
    DEFAULT_DOMAINS,
    PROVENANCE_SUFFIX,
    DomainReport,
    SampleSettings,
    generate_domain,
    generate_domains,
    provenance_path,
    register,
    sample_provenance,
    users_for_reviews,
    vocab_for,
    write_provenance,
)

__all__ = [
    "DEFAULT_DOMAINS",
    "PROVENANCE_SUFFIX",
    "DomainReport",
    "SampleSettings",
    "generate_domain",
    "generate_domains",
    "provenance_path",
    "register",
    "sample_provenance",
    "users_for_reviews",
    "vocab_for",
    "write_provenance",
]
