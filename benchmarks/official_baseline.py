"""The Amazon Reviews 2023 benchmark scripts' logic, single process, pure Python.

A faithful re-statement of ``benchmark_scripts/kcore_filtering.py`` followed by
``benchmark_scripts/last_out_split.py`` of hyp1231/AmazonReviews2023, with the same data
structures (lists of tuples, dicts, sets) and the same order of operations:

- read review JSONL lines (plain or gzip) in file order; a line whose parsing or conversion
  raises ``ValueError`` is skipped, as the script does. The released files call the sort key
  ``timestamp``; the script reads ``sortTimestamp``: both are accepted, ``sortTimestamp`` first;
- per user (in order of first appearance) a stable sort by timestamp, then drop every repeated
  item, keeping its earliest review;
- iterative k-core: each round keeps the interactions whose user and item both had at least
  ``k`` interactions in the previous round, until a round removes nothing;
- per user again a stable sort by timestamp; the last item is the test target, the one before
  the validation target, each earlier item a train target; a target's history is every
  earlier item of that user.

It is independent of the ``pipeline`` package on purpose: it is the yardstick that the
exactness tests and ``benchmarks/pipeline_bench.py`` hold the pipeline against. The only
addition is ``max_history``: histories are cut to their last ``max_history`` items (``0``
keeps them whole, which is what the scripts write).
"""

from __future__ import annotations

import collections
import gzip
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

Interaction = tuple[str, str, float, int]  # (user_id, parent_asin, rating, timestamp)


@dataclass(frozen=True)
class Example:
    """One leave-one-out example: the target interaction and the item ids before it."""

    user_id: str
    parent_asin: str
    rating: float
    timestamp: int
    history: tuple[str, ...]


@dataclass
class BaselineResult:
    """What the two scripts produce for one review file set."""

    raw_interactions: int
    kcore_interactions: list[Interaction]
    train: list[Example] = field(default_factory=list)
    validation: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)


def _open_text(path: Path) -> Iterable[str]:
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def load_ratings(review_files: Iterable[Path]) -> list[Interaction]:
    """``load_ratings`` of kcore_filtering.py over several files read one after the other."""
    inters: list[Interaction] = []
    for review_file in review_files:
        with _open_text(Path(review_file)) as handle:
            for line in handle:
                try:
                    record = json.loads(line.strip())
                    sort_key = "sortTimestamp" if "sortTimestamp" in record else "timestamp"
                    item, user, rating, time = record["parent_asin"], record["user_id"], record["rating"], record[sort_key]
                    inters.append((user, item, float(rating), int(time)))
                except ValueError:
                    continue
    return inters


def make_inters_in_order(inters: list[Interaction]) -> dict[str, list[Interaction]]:
    """Per user, a stable sort by timestamp, keeping the first review of each item."""
    user2inters: dict[str, list[Interaction]] = collections.defaultdict(list)
    for inter in inters:
        user2inters[inter[0]].append(inter)
    ordered: dict[str, list[Interaction]] = {}
    for user, user_inters in user2inters.items():
        user_inters.sort(key=lambda d: d[3])
        seen: set[str] = set()
        kept = []
        for inter in user_inters:
            if inter[1] in seen:
                continue
            seen.add(inter[1])
            kept.append(inter)
        ordered[user] = kept
    return ordered


def filter_inters(inters: list[Interaction], k: int) -> list[Interaction]:
    """``filter_inters`` of kcore_filtering.py with the same k for users and items."""
    if not k:
        return inters
    user2count: dict[str, int] = collections.Counter(inter[0] for inter in inters)
    item2count: dict[str, int] = collections.Counter(inter[1] for inter in inters)
    while True:
        users = {user for user, count in user2count.items() if count >= k}
        items = {item for item, count in item2count.items() if count >= k}
        if len(users) == len(user2count) and len(items) == len(item2count):
            break
        new_inters = []
        new_user2count: dict[str, int] = collections.defaultdict(int)
        new_item2count: dict[str, int] = collections.defaultdict(int)
        for inter in inters:
            if inter[0] in users and inter[1] in items:
                new_inters.append(inter)
                new_user2count[inter[0]] += 1
                new_item2count[inter[1]] += 1
        inters, user2count, item2count = new_inters, new_user2count, new_item2count
    return inters


def _examples(user_inters: list[Interaction], positions: Iterator[int], max_history: int) -> Iterator[Example]:
    for position in positions:
        user, item, rating, timestamp = user_inters[position]
        first = max(0, position - max_history) if max_history else 0
        yield Example(user, item, rating, timestamp, tuple(inter[1] for inter in user_inters[first:position]))


def run_official_baseline(review_files: Iterable[Path], k: int = 5, max_history: int = 0) -> BaselineResult:
    """Run both scripts' logic on ``review_files`` (read in the given order)."""
    raw = load_ratings(review_files)
    deduped = [inter for user_inters in make_inters_in_order(raw).values() for inter in user_inters]
    kcore = filter_inters(deduped, k)
    result = BaselineResult(raw_interactions=len(raw), kcore_interactions=kcore)
    for user_inters in make_inters_in_order(kcore).values():
        n = len(user_inters)
        result.test.extend(_examples(user_inters, iter([n - 1]), max_history))
        if n > 1:
            result.validation.extend(_examples(user_inters, iter([n - 2]), max_history))
        if n > 2:
            result.train.extend(_examples(user_inters, iter(range(n - 2)), max_history))
    return result
