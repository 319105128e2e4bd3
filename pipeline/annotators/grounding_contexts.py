"""The filter's example contexts: what its grounding rules read of each row, built column-wise."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from core.tables import FileSignature
from pipeline.annotators.catalog import GROUNDING_COLUMNS, CatalogFacts, base_with_catalog, cached_by_asin, catalog_identity
from pipeline.annotators.context import contexts_for_sequences, history_pairs, sequences_for_keys
from pipeline.teacher_prompt import ExampleContext, ItemFacts

_worker_grounding: dict[tuple[FileSignature], dict[str, tuple[str | None, ItemFacts]]] = {}
"""History facts for the grounding rules, (title, facts) by asin, for one catalog at a time."""


def _grounding_facts(run_path: Path, keys: list[tuple[str, str | None]]) -> list[ItemFacts]:
    """The facts of each (asin, title) as ``context._contexts_from_table`` builds them with
    :data:`GROUNDING_COLUMNS`, but without a rating (kept per worker process by asin)."""
    identity = catalog_identity(run_path)
    cache = _worker_grounding.get(identity)
    if cache is None:
        _worker_grounding.clear()
        cache = _worker_grounding[identity] = {}
    return cached_by_asin(cache, run_path, keys, GROUNDING_COLUMNS, _history_facts)


def _history_facts(asin: str, title: str | None, catalog_facts: CatalogFacts) -> ItemFacts:
    return ItemFacts(asin, *base_with_catalog({"parent_asin": asin, "title": title}, catalog_facts))


def grounding_contexts(run_path: Path, sequences: pa.Table) -> list[ExampleContext] | None:
    """Contexts of ``sequences`` rows as the filter's grounding rules read them: history items with
    their title, categories and store (:data:`GROUNDING_COLUMNS`, as ``context._contexts_from_table``
    gives them) but no rating, and the target with its asin and title only.

    Each distinct (asin, title) of the history is one facts object for all its rows, found
    column-wise (:func:`history_pairs`). None where the history items carry fields beyond
    ``context.PLAIN_HISTORY_FIELDS`` or miss their asin (the row path applies).
    """
    pairs = history_pairs(sequences)
    if pairs is None:
        return None
    facts = _grounding_facts(run_path, pairs.keys)
    items = [facts[key] for key in pairs.item_key.tolist()]
    target = sequences.column("target")
    starts = pairs.starts.tolist()
    return [
        ExampleContext(user_id=user_id, split=split, history=tuple(items[start:end]), target=ItemFacts(asin, title or ""))
        for user_id, split, asin, title, start, end in zip(
            sequences.column("user_id").to_pylist(),
            sequences.column("split").to_pylist(),
            pc.struct_field(target, "parent_asin").to_pylist(),
            pc.struct_field(target, "title").to_pylist(),
            starts[:-1],
            starts[1:],
            strict=True,
        )
    ]


def load_grounding_contexts_for_keys(run_path: Path, keys: pa.Table) -> dict[tuple[str, str, str], ExampleContext]:
    """:func:`grounding_contexts` of the examples named by ``keys``, by key (the filter's loader;
    the rows are found as ``context.load_contexts_for_keys`` finds them, and rows this form does
    not cover get that loader's contexts)."""
    sequences = sequences_for_keys(Path(run_path), keys)
    if sequences.num_rows == 0:
        return {}
    contexts = grounding_contexts(Path(run_path), sequences)
    if contexts is None:
        return contexts_for_sequences(Path(run_path), sequences, catalog_columns=GROUNDING_COLUMNS)
    return {context.key: context for context in contexts}


def forget_grounding_facts() -> None:
    """Drop this process's grounding facts (see ``worker_caches.forget_worker_caches``)."""
    _worker_grounding.clear()
