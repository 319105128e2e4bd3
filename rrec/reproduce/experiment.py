"""The known-answer experiment: build and release the world, train, evaluate, summarise.

1. :mod:`rrec.reproduce.world` writes the world's raw files; ``rrec run``'s chain
   (:func:`rrec.chain.run_chain`: ingest, sequences with ``train_targets: all``, template
   annotation, self-filter, validation, card, release) releases it into ``OUT/world/registry``.
2. Rationales: the released train rows get the world teacher's rationale
   (:func:`rrec.reproduce.world.rule_rationale`, which states the three rules on the history the
   prompt shows); in the **control** world the same rationales are shuffled across rows, so
   they carry no information about their row.
3. Per seed: C (item only) once, A in each world, SFT+GRPO from each A
   (:func:`training.grpo.run_grpo` on the release); all evaluated on the whole test split with
   :func:`training.evaluate.evaluate_model` (every candidate of the row scored by likelihood;
   the prompt lists no candidate). B is A's model prompted for the item only. C and the
   baselines do not read rationales, so they are the same model in both worlds.
4. Baselines (:mod:`training.baselines`): random, popularity and SASRec, trained on every
   user's known sequence (train rows plus validation histories).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

from rrec.reproduce.report import METHODS, WORLDS, summarise, write_outputs
from rrec.reproduce.wordlm import WordModelSettings
from rrec.reproduce.world import DOMAIN, build_catalog, oracle_item, rule_rationale, write_world

log = logging.getLogger(__name__)

CONFIG = "known_answer_world"
PROMPT_CANDIDATES = 0
"""Candidates the student prompt lists: none, so every method ranks the same 100 unseen candidates."""


class ExperimentSettings(BaseModel):
    """Size of the world, the model, the trainings and the evaluation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    users: int = Field(500, ge=50, description="Users of the world (one test row each).")
    seeds: int = Field(3, ge=1, description="Training seeds per variant.")
    world_seed: int = 7
    model: WordModelSettings = WordModelSettings()
    grpo_steps: int = Field(20, ge=1)
    sasrec_epochs: int = Field(100, ge=1)
    bootstrap: int = Field(1000, ge=100)
    workers: int = Field(2, ge=1, description="Dask workers of the chain.")

    @classmethod
    def quick(cls) -> ExperimentSettings:
        """About 5 minutes on 2 cores: a small world, one seed, short trainings (numbers are noise)."""
        return cls(
            users=150,
            seeds=1,
            model=WordModelSettings(hidden_size=64, num_layers=2, max_steps=30, batch_size=16),
            grpo_steps=2,
            sasrec_epochs=10,
            bootstrap=200,
            workers=1,
        )


def release_world(out: Path, settings: ExperimentSettings, force: bool) -> Path:
    """Write the world and run the whole chain on it; returns the local registry."""
    from pipeline.cluster import dask_client
    from rrec.chain import run_chain

    world_dir = Path(out) / "world"
    world = write_world(world_dir / "raw", settings.users, settings.world_seed)
    config = {
        "seed": settings.world_seed,
        "run": {"judge": False, "inputs": {DOMAIN: {"reviews": [str(world.reviews_path)], "meta": [str(world.meta_path)]}}},
        "sequences": {"k": 5, "max_history": 50, "num_negatives": 99, "train_targets": "all"},
        "annotate": {"annotator": "template", "splits": ["train"]},
        "card": {"pretty_name": "rationale-rec known-answer world"},
        "release": {"version": "1.0.0"},
    }
    config_path = world_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    with dask_client(settings.workers, None) as client:
        result = run_chain(world_dir, config_path, client, force=force)
    return result.registry


def world_rows(registry: Path, settings: ExperimentSettings) -> dict[str, Any]:
    """Released splits, with the planted and the shuffled (control) train rationales."""
    from training.data import load_split

    items = {item.parent_asin: item for item in build_catalog(settings.world_seed)}
    train = load_split(str(registry), CONFIG, None, "train")
    k = settings.model.history_k
    planted = [rule_rationale([items[e["parent_asin"]] for e in row["history"][-k:]], items[row["target"]["parent_asin"]]) for row in train]
    control = list(planted)
    random.Random(settings.world_seed).shuffle(control)
    return {
        "planted": train.remove_columns("rationale").add_column("rationale", planted),
        "control": train.remove_columns("rationale").add_column("rationale", control),
        "validation": load_split(str(registry), CONFIG, None, "validation").to_list(),
        "test": load_split(str(registry), CONFIG, None, "test").to_list(),
        "titles": [item.title for item in items.values()],
    }


def models_dir(out: Path, settings: ExperimentSettings) -> Path:
    """Where the trained models of these settings live: ``OUT/models/<fingerprint>``.

    The fingerprint covers everything a model depends on (world, model, trainings), not the
    number of seeds or the evaluation, so a rerun with more seeds reuses the finished ones and
    a rerun with another world or model never picks up a stale model.
    """
    relevant = settings.model_dump(exclude={"seeds", "bootstrap", "workers", "sasrec_epochs"})
    digest = hashlib.blake2b(json.dumps(relevant, sort_keys=True).encode(), digest_size=6).hexdigest()
    return Path(out) / "models" / digest


def rules_hit_rate(test: list[dict[str, Any]], settings: ExperimentSettings) -> float:
    """Share of test rows whose target is the item the three rules predict from the shown history.

    The known answer's ceiling for HR@1: a model that learned the rules exactly gets about this.
    """
    items = {item.parent_asin: item for item in build_catalog(settings.world_seed)}
    k = settings.model.history_k
    hits = [
        oracle_item([items[e["parent_asin"]] for e in row["history"][-k:]], items).parent_asin == row["target"]["parent_asin"]
        for row in test
    ]
    return sum(hits) / len(hits)


def _trained(model_dir: Path, train: Any) -> Any:
    """A saved model folder, trained by ``train()`` unless it already holds a finished model."""
    from training.models import TRAINING_CONFIG, load_for_inference

    if not (model_dir / TRAINING_CONFIG).exists():
        train()
    return load_for_inference(model_dir)


def _ranks(
    model_and_tokenizer: Any, rows: list[dict[str, Any]], titles: list[str], settings: ExperimentSettings, rationale: bool, seed: int
) -> np.ndarray:
    from training.evaluate import EvalSettings, evaluate_model
    from training.prompts import PromptSettings

    model, tokenizer = model_and_tokenizer
    run = evaluate_model(
        model,
        tokenizer,
        rows,
        infer_rationale=rationale,
        prompt_settings=PromptSettings(history_k=settings.model.history_k, num_candidates=PROMPT_CANDIDATES, seed=seed),
        settings=EvalSettings(batch_size=32, candidate_batch_size=100, max_new_tokens=48),
        catalog_titles=titles,
    )
    log.info("%s", run.metrics)
    return np.array([row.rank for row in run.rows])


def llm_ranks(out: Path, data: dict[str, Any], registry: Path, settings: ExperimentSettings, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Test-row ranks of A, B, C and SFT+GRPO in both worlds for one training seed."""
    from rrec.reproduce.wordlm import tokenizer_texts, train_word_model, word_tokenizer
    from training.grpo import GRPOSettings, run_grpo
    from training.prompts import PromptSettings

    base = models_dir(out, settings) / f"seed{seed}"
    prompts = PromptSettings(history_k=settings.model.history_k, num_candidates=PROMPT_CANDIDATES, seed=seed)
    tokenizer = word_tokenizer(tokenizer_texts(data["planted"], data["titles"], prompts))
    test, titles = data["test"], data["titles"]

    def sft(rows: Any, rationale: bool, folder: Path) -> Any:
        return _trained(
            folder,
            lambda: train_word_model(rows, tokenizer, with_rationale=rationale, settings=settings.model, seed=seed, output_dir=folder),
        )

    c_ranks = _ranks(sft(data["planted"], False, base / "C"), test, titles, settings, True, seed)
    ranks: dict[str, dict[str, np.ndarray]] = {}
    for world in WORLDS:
        a_dir, grpo_dir = base / world / "A", base / world / "SFT+GRPO"
        a_model = sft(data[world], True, a_dir)
        grpo = GRPOSettings(
            max_steps=settings.grpo_steps, num_generations=4, batch_size=8, max_completion_length=64, learning_rate=1e-4,
            full=True, activation_checkpointing=False, save_steps=10_000, logging_steps=1, seed=seed,
        )  # fmt: skip
        grpo_model = _trained(grpo_dir, functools.partial(run_grpo, a_dir, str(registry), CONFIG, None, grpo_dir, grpo, force=True))
        ranks[world] = {
            "A": _ranks(a_model, test, titles, settings, True, seed),
            "B": _ranks(a_model, test, titles, settings, False, seed),
            "C": c_ranks,
            "SFT+GRPO": _ranks(grpo_model, test, titles, settings, True, seed),
        }
    return ranks


def baseline_ranks(data: dict[str, Any], settings: ExperimentSettings, seed: int) -> dict[str, np.ndarray]:
    """Test-row ranks of random, popularity and SASRec (trained on every user's known sequence)."""
    from training.baselines import (
        BaselineSettings,
        popularity_counts,
        popularity_scorer,
        random_scorer,
        rank_rows,
        sasrec_scorer,
        training_sequences,
    )

    sequences = training_sequences(data["planted"], data["validation"])
    config = dataclasses.replace(BaselineSettings(sasrec_epochs=settings.sasrec_epochs).sasrec_config(), seed=seed)
    scorers = {
        "random": random_scorer(seed),
        "popularity": popularity_scorer(popularity_counts(sequences)),
        "sasrec": sasrec_scorer(sequences, data["test"], config, data["validation"]),
    }
    return {method: np.array(rank_rows(data["test"], scorer, f"ranking with {method}")) for method, scorer in scorers.items()}


def run_experiment(out: Path, settings: ExperimentSettings, *, force: bool = False) -> dict[str, Any]:
    """The whole experiment into ``out``; returns the ``results.json`` content.

    The outputs are rewritten after every seed (``seeds`` lists the seeds done so far), so a
    long run that is stopped keeps the results of its finished seeds; a rerun reuses every
    trained model.
    """
    import torch

    started = time.monotonic()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # small matrices: one thread per process beats two on a shared 2-core machine
    if force:
        shutil.rmtree(models_dir(out, settings), ignore_errors=True)
    registry = release_world(out, settings, force)
    data = world_rows(registry, settings)
    context = {
        "protocol": {
            "prompt_candidates": PROMPT_CANDIDATES,
            "history_k": settings.model.history_k,
            "candidates_ranked": len(data["test"][0]["candidates"]),
        },
        "reference": {"rules_HR@1": rules_hit_rate(data["test"], settings)},
        "settings": settings.model_dump(),
    }
    per_seed: dict[str, dict[str, list[np.ndarray]]] = {world: {method: [] for method in METHODS} for world in WORLDS}
    seeds: list[int] = []
    for seed in range(1, settings.seeds + 1):
        llm = llm_ranks(out, data, registry, settings, seed)
        baselines = baseline_ranks(data, settings, seed)
        for world in WORLDS:
            for method in METHODS:
                per_seed[world][method].append(llm[world][method] if method in llm[world] else baselines[method])
        seeds.append(seed)
        ranks = {world: {method: np.stack(per_seed[world][method]) for method in METHODS} for world in WORLDS}
        results = {**summarise(ranks, seeds, settings.bootstrap), **context, "wall_time_s": round(time.monotonic() - started, 1)}
        write_outputs(out, results)
        (out / "ranks.json").write_text(json.dumps({w: {m: r.tolist() for m, r in ranks[w].items()} for w in WORLDS}), encoding="utf-8")
        log.info("seed %d of %d done after %.0f s: results in %s", seed, settings.seeds, results["wall_time_s"], out / "results.json")
    return results
