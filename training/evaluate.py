"""Evaluate a trained rationale-first recommender on a released split (issue 5, point 6).

For every row of the split (the test split by default):

1. **Generation.** Greedy decoding of the answer to the student prompt (rationale then item for
   the rationale variants A and C, item only for B), stopping after ``</item>``. The generated
   title is mapped to a candidate by exact, then normalised-title match
   (:mod:`training.metrics`), giving generative HR@1, the valid rate and the hallucination
   rate. Every generation is saved (Parquet) with the sequence key, so ``rrec judge`` can score
   the rationales.
2. **Ranking.** Every candidate of the row is scored by the model's length-normalised
   log-likelihood (mean token log-probability) of ``<item>title</item>`` after the prompt and,
   for the rationale variants, after the rationale the model generated in step 1. The shared
   prefix is run once; its KV cache is repeated over a batch of candidates, which are then run
   together (right-padded), so a row costs one prefix pass plus one pass per candidate batch.
   The target's rank gives HR@1, HR@5 and NDCG@5, ties broken as :mod:`training.metrics` says.
   A candidate without a title (an item without metadata) is ranked last: the model cannot
   name it. The ID-based baselines can still rank such items; releases keep them rare.

A rationale generation that never closes its think block is closed where its item block starts
(or at its end), so the candidates are still scored after whatever rationale the model wrote.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import Field

from core.config import StageSettings
from core.progress import track
from core.rationale_format import ITEM_CLOSE, ITEM_OPEN, THINK_CLOSE, THINK_OPEN, parse
from training.metrics import (
    GenerationOutcome,
    candidates_per_row,
    generation_metrics,
    iter_titles,
    judge_generation,
    normalise_title,
    ranking_metrics,
    target_rank,
)
from training.paper_variants import BY_NAME
from training.prompts import STUDENT_PROMPT_VERSION, PromptSettings, build_messages, check_candidate_protocol

log = logging.getLogger(__name__)

Variant = Literal["A", "B", "C"]

GENERATIONS_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("split", pa.string()),
        ("target_parent_asin", pa.string()),
        ("target_title", pa.string()),
        ("rationale", pa.string()),
        ("item", pa.string()),
        ("generation", pa.string()),
        ("well_formed", pa.bool_()),
        ("matched_parent_asin", pa.string()),
        ("hit", pa.bool_()),
        ("valid", pa.bool_()),
        ("hallucinated", pa.bool_()),
        ("rank", pa.int32()),
        ("infer_rationale", pa.bool_()),
        ("model", pa.string()),
        ("prompt_version", pa.string()),
    ]
)


class EvalSettings(StageSettings):
    """Settings of ``rrec evaluate`` (section ``evaluate`` of the config file).

    The prompt options default to the ones the model was trained with (its
    ``training_config.json``), so a model is evaluated on the prompt it learned.
    """

    split: Literal["validation", "test"] = "test"
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N rows of the split.")
    batch_size: int = Field(8, ge=1, description="Rows generated together.")
    candidate_batch_size: int = Field(32, ge=1, description="Candidates scored together after one shared prefix.")
    max_new_tokens: int = Field(256, ge=1, description="Longest generated answer (rationale and item).")
    history_k: int | None = Field(None, ge=1, description="History items in the prompt (default: as trained).")
    num_candidates: int | None = Field(None, ge=0, description="Candidates listed in the prompt (default: as trained).")
    # Not named ``seed``: the config's top-level seed would fill it and override the trained one.
    prompt_seed: int | None = Field(None, description="Seed of the prompt's candidate draw (default: as trained).")
    generations: Path | None = Field(None, description="Parquet file for the generations (none: not saved).")


@dataclass(frozen=True)
class RowResult:
    """The evaluation of one row: its target rank and what its generation amounted to."""

    rank: int
    outcome: GenerationOutcome
    generation: str
    rationale: str | None
    item: str | None


@dataclass(frozen=True)
class EvaluationRun:
    """Metrics (fractions) and one result per evaluated row, in split order."""

    metrics: dict[str, float | int]
    rows: list[RowResult]


def prompt_settings_for(model_dir: Path, settings: EvalSettings) -> PromptSettings:
    """Prompt options: explicit settings, else the model's training settings, else the defaults."""
    from training.models import read_training_config

    trained = read_training_config(model_dir).get("settings", {})
    explicit = {"history_k": settings.history_k, "num_candidates": settings.num_candidates, "seed": settings.prompt_seed}
    values = {}
    for name, value in explicit.items():
        if value is not None:
            values[name] = value
        elif trained.get(name) is not None:
            values[name] = trained[name]
    return PromptSettings(**values)


def default_variant(model_dir: Path) -> Variant:
    """The variant a model folder was trained as (``A`` when it does not say)."""
    from training.models import read_training_config

    record = read_training_config(model_dir)
    if record.get("with_rationale") is False:
        return "C"
    return record.get("variant") if record.get("variant") in BY_NAME else "A"


class CandidateScorer:
    """Length-normalised log-likelihood of ``<item>title</item>`` after a shared prefix."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._title_ids: dict[str, list[int]] = {}

    def answer_ids(self, title: str) -> list[int]:
        """Token ids of ``<item>title</item>`` (cached: titles recur across rows)."""
        if title not in self._title_ids:
            self._title_ids[title] = self.tokenizer(f"{ITEM_OPEN}{title}{ITEM_CLOSE}", add_special_tokens=False)["input_ids"]
        return self._title_ids[title]

    @torch.no_grad()
    def score(self, prefix_ids: Sequence[int], titles: Sequence[str]) -> list[float]:
        """Mean token log-probability of each title's answer after ``prefix_ids``.

        A candidate without a title scores NaN (ranked last): a language model can only
        recommend an item it can name.
        """
        device = self.model.device
        prefix = self.model(input_ids=torch.tensor([list(prefix_ids)], device=device), use_cache=True)
        # The prefix's last position predicts every answer's first token.
        first_logprobs = prefix.logits[0, -1].float().log_softmax(-1)
        named = [i for i, title in enumerate(titles) if title.strip()]
        scores = [math.nan] * len(titles)
        for start in range(0, len(named), self.batch_size):
            positions = named[start : start + self.batch_size]
            answers = [self.answer_ids(titles[i]) for i in positions]
            for i, value in zip(positions, self._score_batch(prefix.cache, len(prefix_ids), first_logprobs, answers)):
                scores[i] = value
        return scores

    def _score_batch(self, cache: Any, prefix_length: int, first_logprobs: torch.Tensor, answers: list[list[int]]) -> list[float]:
        device = self.model.device
        width = max(len(ids) for ids in answers)
        ids = torch.full((len(answers), width), self.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(answers), width), dtype=torch.long, device=device)
        for row, answer in enumerate(answers):
            ids[row, : len(answer)] = torch.tensor(answer, device=device)
            mask[row, : len(answer)] = 1
        batch_cache = copy.deepcopy(cache)
        batch_cache.batch_repeat_interleave(len(answers))
        attention = torch.cat([torch.ones((len(answers), prefix_length), dtype=torch.long, device=device), mask], dim=1)
        logits = self.model(input_ids=ids, attention_mask=attention, cache=batch_cache, use_cache=True).logits
        token_logprobs = torch.empty((len(answers), width), device=device)
        token_logprobs[:, 0] = first_logprobs[ids[:, 0]]
        if width > 1:
            following = logits[:, :-1].float().log_softmax(-1)
            token_logprobs[:, 1:] = following.gather(-1, ids[:, 1:, None]).squeeze(-1)
        token_logprobs = token_logprobs * mask
        return (token_logprobs.sum(1) / mask.sum(1)).tolist()


class Generator:
    """Greedy batched generation of answers, and the ranking prefix each answer implies."""

    def __init__(self, model: Any, tokenizer: Any, max_new_tokens: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        stops = model.generation_config.eos_token_id
        stops = set(stops if isinstance(stops, list) else [stops]) | {tokenizer.eos_token_id, tokenizer.pad_token_id}
        self.stop_ids = {s for s in stops if s is not None}
        # Chat markers are stripped from decoded text; the rationale tags must stay to be parsed.
        self.strip_tokens = [t for t in tokenizer.all_special_tokens if t not in (THINK_OPEN, THINK_CLOSE, ITEM_OPEN, ITEM_CLOSE)]

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def generate(self, prompts: list[list[int]]) -> list[list[int]]:
        """Greedy answers (token ids, cut at the first stop token) to left-padded prompts."""
        device = self.model.device
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        output = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            stop_strings=[ITEM_CLOSE],
            tokenizer=self.tokenizer,
            pad_token_id=pad,
        )
        answers = []
        for row in output[:, width:].tolist():
            cut = next((i for i, token in enumerate(row) if token in self.stop_ids), len(row))
            answers.append(row[:cut])
        return answers

    def decode(self, answer: list[int]) -> str:
        text = self.tokenizer.decode(answer, skip_special_tokens=False)
        for token in self.strip_tokens:
            text = text.replace(token, "")
        return text.strip()

    def rationale_prefix(self, prompt: list[int], answer: list[int], text: str) -> list[int]:
        """Prompt plus the generated rationale up to and including ``</think>``."""
        close_ids = self.tokenizer(THINK_CLOSE, add_special_tokens=False)["input_ids"]
        for end in range(len(close_ids), len(answer) + 1):
            if answer[end - len(close_ids) : end] == close_ids:
                return prompt + answer[:end]
        # No closed think block in the generated ids: close it at the item block (or the end).
        body = text.split(ITEM_OPEN, 1)[0]
        if THINK_CLOSE in body:
            body = body.split(THINK_CLOSE, 1)[0]
        if not body.lstrip().startswith(THINK_OPEN):
            body = THINK_OPEN + body
        return prompt + self.tokenizer(body + THINK_CLOSE, add_special_tokens=False)["input_ids"]


def evaluate_model(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    *,
    infer_rationale: bool,
    prompt_settings: PromptSettings,
    settings: EvalSettings,
    catalog_titles: Iterable[str] | None = None,
) -> EvaluationRun:
    """Generate and rank for every row with an in-memory model (see the module docstring).

    Refuses (``ValueError``) prompt settings that list a subset of a row's candidates (the
    evaluation protocol, :func:`training.prompts.check_candidate_protocol`). The metrics carry
    ``candidates``, the number of candidates ranked per row.
    """
    check_candidate_protocol(prompt_settings, (len(row["candidates"]) for row in rows))
    catalog_keys = frozenset(normalise_title(t) for t in catalog_titles if t) if catalog_titles is not None else None
    generator = Generator(model, tokenizer, settings.max_new_tokens)
    scorer = CandidateScorer(model, tokenizer, settings.candidate_batch_size)
    batches = [rows[start : start + settings.batch_size] for start in range(0, len(rows), settings.batch_size)]
    results: list[RowResult] = []
    for batch in track(batches, f"evaluating {len(rows)} rows", total=len(batches)):
        prompts = [generator.prompt_ids(build_messages(row, prompt_settings, infer_rationale)) for row in batch]
        for row, prompt, answer in zip(batch, prompts, generator.generate(prompts)):
            text = generator.decode(answer)
            parsed = parse(text, require_think=infer_rationale)
            titles = iter_titles(row["candidates"])
            target_index = int(row["target_index"])
            outcome = judge_generation(parsed.item, parsed.well_formed, titles, target_index, catalog_keys)
            prefix = generator.rationale_prefix(prompt, answer, text) if infer_rationale else prompt
            rank = target_rank(scorer.score(prefix, titles), target_index)
            results.append(RowResult(rank, outcome, text, parsed.rationale, parsed.item))
    metrics = ranking_metrics([r.rank for r in results])
    metrics["candidates"] = candidates_per_row(rows)
    metrics.update(generation_metrics([r.outcome for r in results]))
    return EvaluationRun(metrics, results)


def generations_table(
    rows: Sequence[dict[str, Any]], run: EvaluationRun, *, split: str, model_name: str, infer_rationale: bool
) -> pa.Table:
    """One record per evaluated row: the sequence key, the generation and how it scored."""
    records = []
    for row, result in zip(rows, run.rows):
        matched = result.outcome.matched_index
        records.append(
            {
                "user_id": row["user_id"],
                "split": split,
                "target_parent_asin": row["target"]["parent_asin"],
                "target_title": row["target"]["title"],
                "rationale": result.rationale,
                "item": result.item,
                "generation": result.generation,
                "well_formed": result.outcome.well_formed,
                "matched_parent_asin": row["candidates"][matched]["parent_asin"] if matched is not None else None,
                "hit": result.outcome.hit,
                "valid": result.outcome.real_item,
                "hallucinated": result.outcome.hallucinated,
                "rank": result.rank,
                "infer_rationale": infer_rationale,
                "model": model_name,
                "prompt_version": STUDENT_PROMPT_VERSION,
            }
        )
    return pa.Table.from_pylist(records, schema=GENERATIONS_SCHEMA)


def evaluate(
    model_dir: Path,
    dataset: str,
    config: str,
    revision: str | None,
    *,
    infer_rationale: bool,
    settings: EvalSettings,
) -> dict[str, float | int]:
    """Evaluate a trained model folder on a released config; returns the metrics as fractions.

    Keys: ``HR@1``, ``HR@5``, ``NDCG@5``, ``n``, ``candidates``, ``gen_HR@1``, ``valid_rate``,
    ``hallucination_rate``, ``well_formed_rate``, ``in_candidates_rate``. With
    ``settings.generations`` set, the generations are written there as Parquet.
    """
    from training.data import load_catalog, load_split
    from training.models import load_for_inference

    model_dir = Path(model_dir)
    rows_dataset = load_split(dataset, config, revision, settings.split)
    if settings.limit is not None:
        rows_dataset = rows_dataset.select(range(min(settings.limit, len(rows_dataset))))
    rows = rows_dataset.to_list()
    try:
        catalog_titles: list[str] | None = load_catalog(dataset, config, revision)["title"]
    except ValueError as exc:
        log.warning("no item catalog (%s): only the row's candidates count as real items", exc)
        catalog_titles = None
    prompt_settings = prompt_settings_for(model_dir, settings)
    # Before the model loads: settings that break the protocol fail at once.
    check_candidate_protocol(prompt_settings, (len(row["candidates"]) for row in rows))
    model, tokenizer = load_for_inference(model_dir)
    log.info(
        "evaluating %s on %d %s rows of %s/%s (%s), prompt %s",
        model_dir, len(rows), settings.split, dataset, config,
        "rationale then item" if infer_rationale else "item only", prompt_settings.model_dump(),
    )  # fmt: skip
    run = evaluate_model(
        model,
        tokenizer,
        rows,
        infer_rationale=infer_rationale,
        prompt_settings=prompt_settings,
        settings=settings,
        catalog_titles=catalog_titles,
    )
    if settings.generations is not None:
        table = generations_table(rows, run, split=settings.split, model_name=str(model_dir), infer_rationale=infer_rationale)
        settings.generations.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, settings.generations)
        log.info("wrote %d generations to %s", table.num_rows, settings.generations)
    return run.metrics
