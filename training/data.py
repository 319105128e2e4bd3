"""Load released dataset versions the way a user would (never a run folder).

A dataset source is one of:

- a Hugging Face Hub dataset id (``org/name``) plus a revision (a version tag such as
  ``v1.0.0``);
- a local registry, i.e. a git repository with one tag per version (what ``rrec release``
  writes): the tag is pulled into the cache and every checksum verified;
- a plain release folder (what ``rrec pull`` writes): verified against its manifest; a
  revision, if given, must be its version.

The loading itself is ``release.loading.load_release`` (the same code ``rrec pull`` users
run); this module adds the record of exactly which version was read, so trained models can say
where they came from, and turns rows into chat examples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import datasets

from release.loading import DatasetSource, load_release, resolve_source
from training.prompts import PromptSettings, build_completion, build_messages

log = logging.getLogger(__name__)


def load_resolved(source: DatasetSource, split: str, config: str | None = None) -> datasets.Dataset:
    """One split of the exact version ``source`` is pinned to (``config`` defaults to the source's)."""
    try:
        return load_release(source.dataset, config or source.config, source.revision, split=split)
    except ConnectionError as exc:
        raise ValueError(
            f"cannot reach {source.dataset} on the Hub ({exc}); check the network or HF_HUB_OFFLINE, or train on a "
            "release pulled with `rrec pull`"
        ) from None


def load_split_with_source(dataset: str, config: str, revision: str | None, split: str) -> tuple[datasets.Dataset, DatasetSource]:
    """Like :func:`load_split`, also returning the resolved :class:`DatasetSource`."""
    source = resolve_source(dataset, config, revision)
    return load_resolved(source, split), source


def load_split(dataset: str, config: str, revision: str | None, split: str) -> datasets.Dataset:
    """One split (``train``, ``validation`` or ``test``) of a released config, rows of ``RELEASE_ROW``."""
    return load_split_with_source(dataset, config, revision, split)[0]


def catalog_config(config: str) -> str:
    """The config name of a domain's item catalog (DESIGN.md, "Release layout")."""
    return f"{config}_items"


def load_catalog(dataset: str, config: str, revision: str | None) -> datasets.Dataset:
    """The item catalog of a released config (config ``<config>_items``, split ``items``)."""
    return load_resolved(resolve_source(dataset, config, revision), "items", catalog_config(config))


@dataclass(frozen=True)
class ChatExamples:
    """Prompt-completion chat examples built from released rows, with the rows left out and why."""

    dataset: datasets.Dataset
    skipped_without_rationale: int
    skipped_without_title: int = 0


def to_chat_examples(
    rows: datasets.Dataset, settings: PromptSettings, with_rationale: bool, require_rationale: bool | None = None
) -> ChatExamples:
    """Conversational prompt-completion examples (``prompt``: system + user turns, ``completion``: assistant turn).

    ``with_rationale`` selects the rationale-first prompt and target (variants A/B in training);
    otherwise the item-only prompt and target (variant C in training). Rows without a rationale
    cannot be rationale-first targets, nor rows whose target has no title (an item without
    metadata): both are left out and counted, never silently. ``require_rationale`` (default:
    ``with_rationale``) leaves out rows without a rationale also for item-only targets, so that
    variant C trains and is checked on exactly the rows variant A uses.
    """
    if require_rationale is None:
        require_rationale = with_rationale
    prompts, completions, user_ids = [], [], []
    skipped = untitled = 0
    for row in rows:
        if not row["target"].get("title"):
            untitled += 1
            continue
        if require_rationale and not row.get("rationale"):
            skipped += 1
            continue
        prompts.append(build_messages(row, settings, infer_rationale=with_rationale))
        completions.append([{"role": "assistant", "content": build_completion(row, with_rationale)}])
        user_ids.append(row["user_id"])
    if skipped:
        log.warning("left out %d of %d rows that have no rationale", skipped, len(rows))
    if untitled:
        log.warning("left out %d of %d rows whose target has no title (no metadata)", untitled, len(rows))
    examples = datasets.Dataset.from_dict({"prompt": prompts, "completion": completions, "user_id": user_ids})
    return ChatExamples(examples, skipped, untitled)
