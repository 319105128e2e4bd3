"""Non-LLM baselines scored on exactly the candidates the LLM variants are scored on.

- ``random``: a uniform random score per candidate, seeded from (seed, user_id), so a row's
  ranking never depends on which other rows are evaluated.
- ``popularity``: the number of distinct users whose known sequence holds the candidate.
- ``sasrec``: :mod:`training.sasrec` trained on the known sequences, early-stopped on NDCG@5
  over the validation split's rows (their own candidates), as the reference code does.
- ``shown``: 1 for a candidate the student prompt lists, else 0 -- a scorer that knows only
  what the prompt shows. Under the evaluation protocol (the prompt lists every candidate or
  none) it ranks at chance; a prompt listing a subset around the target would lift it far
  above (the leak of issue 10), which is how this method checks a prompt setting.

What the baselines learn from (:func:`training_sequences`): everything a recommender may know
about a user at test time, i.e. the user's whole sequence except the validation and test
targets. The train rows give history plus train target; the validation rows' histories carry
the rest (up to the item before the validation target), also for users whose train rows the
self-filter removed. Test rows, and the validation targets, never reach training. Every row of
the evaluated split is then ranked over its own candidates with the tie rule of
:mod:`training.metrics`, and the results record how many candidates each row ranked.

Results map the method name (``random``, ``popularity``, ``sasrec``, ``shown``) to ``HR@1``,
``HR@5``, ``NDCG@5``, ``n`` and ``candidates`` (DESIGN.md, "Command-line contract").
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field

from core.config import StageSettings
from core.progress import track
from training.metrics import candidates_per_row, ranking_metrics, target_rank
from training.prompts import PromptSettings, select_candidates
from training.sasrec import SasRec, SasRecConfig, score_candidates, score_many, train_sasrec

log = logging.getLogger(__name__)

Method = Literal["random", "popularity", "sasrec", "shown"]
Row = Mapping[str, Any]
Scorer = Callable[[Row], Sequence[float]]


class BaselineSettings(StageSettings):
    """Settings of ``rrec baselines`` (section ``baselines`` of the config file)."""

    methods: list[Method] = Field(default_factory=lambda: ["random", "popularity", "sasrec", "shown"])
    seed: int = 42
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N test rows.")
    shown_num_candidates: int = Field(
        PromptSettings().num_candidates,
        ge=0,
        description="Prompt candidate count the `shown` method checks (default: the student prompt's).",
    )
    split: Literal["validation", "test"] = "test"
    sasrec_hidden: int = Field(64, ge=1)
    sasrec_blocks: int = Field(2, ge=1)
    sasrec_heads: int = Field(1, ge=1)
    sasrec_dropout: float = Field(0.2, ge=0.0, lt=1.0)
    sasrec_max_len: int = Field(50, ge=1)
    sasrec_epochs: int = Field(200, ge=1, description="Most epochs; early stopping usually ends sooner.")
    sasrec_batch_size: int = Field(128, ge=1)
    sasrec_lr: float = Field(1e-3, gt=0.0)
    sasrec_eval_every: int = Field(10, ge=1, description="Epochs between validation checks.")
    sasrec_patience: int = Field(5, ge=0, description="Checks without gain before stopping (0: never).")
    sasrec_loss: Literal["bce", "ce"] = Field("bce", description="bce: one sampled negative (reference); ce: softmax over the catalog.")

    def sasrec_config(self) -> SasRecConfig:
        return SasRecConfig(
            hidden=self.sasrec_hidden,
            blocks=self.sasrec_blocks,
            heads=self.sasrec_heads,
            dropout=self.sasrec_dropout,
            max_len=self.sasrec_max_len,
            epochs=self.sasrec_epochs,
            batch_size=self.sasrec_batch_size,
            lr=self.sasrec_lr,
            eval_every=self.sasrec_eval_every,
            patience=self.sasrec_patience,
            seed=self.seed,
            loss=self.sasrec_loss,
        )


def user_seed(seed: int, user_id: str) -> np.random.Generator:
    """A generator seeded from (seed, user_id) with a hash that is stable across processes."""
    digest = int.from_bytes(hashlib.sha256(user_id.encode("utf-8")).digest()[:8], "big")
    return np.random.default_rng([seed, digest])


def _merge_windows(known: list[str], window: list[str]) -> list[str]:
    """Join two windows of one user's chronological sequence (items are unique per user).

    Histories are the last ``max_history`` items before a target, so two windows of one user
    overlap or one holds the other; the union keeps the earlier start and the later end.
    """
    if not known:
        return list(window)
    if known[0] in window:
        start = window.index(known[0])
        tail = window[start:] if len(window) - start > len(known) else known
        return window[:start] + tail
    if window[0] in known:
        start = known.index(window[0])
        return known[:start] + (window if len(window) > len(known) - start else known[start:])
    # Disjoint windows cannot come from one release; keep both, the longer first.
    return known + window if len(known) >= len(window) else window + known


def training_sequences(train_rows: Iterable[Row], validation_rows: Iterable[Row] = ()) -> dict[str, list[str]]:
    """Each user's known interactions in order (parent_asins): all but the validation and test targets.

    A train row contributes its history and its target; a validation row only its history
    (everything before the validation target, which stays held out). Test rows are never read.
    """
    sequences: dict[str, list[str]] = {}
    for row in train_rows:
        window = [event["parent_asin"] for event in row["history"]] + [row["target"]["parent_asin"]]
        sequences[row["user_id"]] = _merge_windows(sequences.get(row["user_id"], []), window)
    for row in validation_rows:
        window = [event["parent_asin"] for event in row["history"]]
        if window:
            sequences[row["user_id"]] = _merge_windows(sequences.get(row["user_id"], []), window)
    return sequences


def popularity_counts(sequences: Mapping[str, Sequence[str]]) -> Counter[str]:
    """Distinct users per item over the training interactions."""
    return Counter(item for sequence in sequences.values() for item in set(sequence))


def random_scorer(seed: int) -> Scorer:
    """Uniform random scores, seeded per user."""
    return lambda row: user_seed(seed, row["user_id"]).random(len(row["candidates"])).tolist()


def popularity_scorer(counts: Mapping[str, int]) -> Scorer:
    """Scores = training popularity; unseen items score 0 (ties by candidate position)."""
    return lambda row: [float(counts.get(c["parent_asin"], 0)) for c in row["candidates"]]


def shown_scorer(prompt: PromptSettings) -> Scorer:
    """1.0 for each candidate the student prompt ``prompt`` lists for the row, else 0.0."""

    def score(row: Row) -> Sequence[float]:
        listed = {candidate["parent_asin"] for candidate in select_candidates(row, prompt)}
        return [1.0 if candidate["parent_asin"] in listed else 0.0 for candidate in row["candidates"]]

    return score


def _ndcg_at_5(rows: Sequence[tuple[list[int], list[int]]], targets: Sequence[int]) -> Callable[[SasRec], float] | None:
    """NDCG@5 of a SASRec model on indexed (history, candidates) rows; None without rows."""
    if not rows:
        return None

    def validate(model: SasRec) -> float:
        scores = score_many(model, [history for history, _ in rows], [candidates for _, candidates in rows])
        return float(ranking_metrics([target_rank(s, t) for s, t in zip(scores, targets)])["NDCG@5"])

    return validate


def sasrec_scorer(
    sequences: Mapping[str, Sequence[str]],
    eval_rows: Sequence[Row],
    config: SasRecConfig,
    validation_rows: Sequence[Row] = (),
) -> Scorer:
    """Train SASRec on the training sequences and score eval rows from their own histories.

    With ``validation_rows``, training keeps the epoch with the best NDCG@5 on them. The item
    vocabulary covers every item of the training sequences and of the scored rows (histories
    and candidates), so no candidate is out of vocabulary; items never seen in training keep
    their initial embedding, the usual cold-item situation.
    """
    vocabulary: dict[str, int] = {}
    for sequence in sequences.values():
        for item in sequence:
            vocabulary.setdefault(item, len(vocabulary) + 1)
    for row in [*eval_rows, *validation_rows]:
        for event in row["history"]:
            vocabulary.setdefault(event["parent_asin"], len(vocabulary) + 1)
        for candidate in row["candidates"]:
            vocabulary.setdefault(candidate["parent_asin"], len(vocabulary) + 1)

    def indexed(row: Row) -> tuple[list[int], list[int]]:
        return [vocabulary[e["parent_asin"]] for e in row["history"]], [vocabulary[c["parent_asin"]] for c in row["candidates"]]

    validate = _ndcg_at_5([indexed(row) for row in validation_rows], [int(row["target_index"]) for row in validation_rows])
    model = train_sasrec([[vocabulary[item] for item in sequences[user]] for user in sorted(sequences)], len(vocabulary), config, validate)

    def score(row: Row) -> Sequence[float]:
        return score_candidates(model, *indexed(row)).tolist()

    return score


def rank_rows(rows: Sequence[Row], scorer: Scorer, description: str) -> list[int]:
    """0-based target rank of every row under ``scorer``."""
    return [target_rank(scorer(row), int(row["target_index"])) for row in track(rows, description, total=len(rows))]


def evaluate_baselines(
    train_rows: Iterable[Row],
    eval_rows: Sequence[Row],
    settings: BaselineSettings,
    validation_rows: Sequence[Row] = (),
    *,
    early_stop: bool = True,
) -> dict[str, dict[str, float | int]]:
    """Train every requested baseline on what users are known to have bought and rank ``eval_rows``.

    ``train_rows`` and ``validation_rows`` (the release's train and validation splits) give the
    known sequences (:func:`training_sequences`). With ``early_stop``, SASRec keeps the epoch
    with the best NDCG@5 on ``validation_rows``; pass ``early_stop=False`` when the validation
    rows are the evaluated ones.

    Returns method name (``random``, ``popularity``, ``sasrec``, ``shown``) -> ``HR@1``,
    ``HR@5``, ``NDCG@5``, ``n``, ``candidates`` (fractions; candidates ranked per row).
    """
    sequences = training_sequences(train_rows, validation_rows)
    if not sequences:
        raise ValueError("the train and validation splits are empty: the baselines have nothing to learn from")
    log.info("%d known users, %d known interactions", len(sequences), sum(map(len, sequences.values())))
    candidates = candidates_per_row(eval_rows)
    results: dict[str, dict[str, float | int]] = {}
    for method in settings.methods:
        if method == "random":
            scorer = random_scorer(settings.seed)
        elif method == "popularity":
            scorer = popularity_scorer(popularity_counts(sequences))
        elif method == "shown":
            scorer = shown_scorer(PromptSettings(num_candidates=settings.shown_num_candidates))
        else:
            scorer = sasrec_scorer(sequences, eval_rows, settings.sasrec_config(), validation_rows if early_stop else ())
        results[method] = {**ranking_metrics(rank_rows(eval_rows, scorer, f"ranking with {method}")), "candidates": candidates}
        log.info("%s: %s", method, results[method])
    return results


def run_baselines(dataset: str, config: str, revision: str | None, settings: BaselineSettings) -> dict[str, dict[str, float | int]]:
    """Load a released config and evaluate the baselines on its test (or validation) split.

    The baselines learn from the train split plus the validation rows' histories. SASRec is
    early-stopped on the validation split when the test split is evaluated; when the validation
    split itself is evaluated it trains for the full ``sasrec_epochs`` instead.
    """
    from training.data import load_resolved, load_split_with_source

    train, source = load_split_with_source(dataset, config, revision, "train")
    validation = load_resolved(source, "validation").to_list()
    evaluated = validation if settings.split == "validation" else load_resolved(source, "test").to_list()
    if settings.limit is not None:
        evaluated = evaluated[: settings.limit]
    return evaluate_baselines(train, evaluated, settings, validation, early_stop=settings.split == "test")
