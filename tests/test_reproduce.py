"""`rrec reproduce`: the known-answer world, its rationales, the intervals and the whole command."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from rrec.reproduce.report import METHODS, METRICS, WORLDS, bootstrap, summarise
from rrec.reproduce.world import BANDS, FOLLOW_UP, RULE_PROBABILITY, STORES, build_catalog, oracle_item, rule_rationale, user_sequence


def _sequences(n: int) -> list:
    by_key = {(i.family, i.store, i.band): i for i in build_catalog(7)}
    return [user_sequence(random.Random(index), by_key) for index in range(n)]


def test_next_items_follow_the_three_rules_at_the_stated_rate():
    steps = [(prev, item) for sequence in _sequences(2000) for prev, item in itertools.pairwise(sequence)]
    follow = np.mean([item.family == FOLLOW_UP[prev.family] for prev, item in steps])
    # Each rule holds with RULE_PROBABILITY; redrawn repeats lower it a little, chance is 1/10.
    assert RULE_PROBABILITY - 0.1 < follow <= RULE_PROBABILITY + 0.02
    loyal = [Counter(i.store for i in s).most_common(1)[0][1] / len(s) for s in _sequences(500)]
    assert np.mean(loyal) > 0.7  # one store dominates each user's history (chance: 1/6)
    assert len({i.title for i in build_catalog(7)}) == 10 * len(STORES) * len(BANDS)


def test_rule_rationale_states_the_rules_forward_without_the_title():
    catalog = build_catalog(7)
    items = {i.parent_asin: i for i in catalog}
    for sequence in _sequences(200):
        history, target = sequence[:-1], sequence[-1]
        rationale = rule_rationale(history, target)
        assert target.title not in rationale
        assert rationale.startswith(f"last bought {history[-1].family} ")
        assert target.family in rationale and target.store in rationale and target.band in rationale
        assert len(rationale.split()) < 50
        if oracle_item(history, items) == target:
            assert "but" not in rationale.split()  # every rule held, and the rationale says so


def test_bootstrap_interval_holds_the_mean_and_paired_gap_of_equal_methods_is_zero():
    rng = np.random.default_rng(0)
    values = rng.random(300)
    stat = bootstrap(values, 500, 0)
    assert stat["low"] <= stat["mean"] <= stat["high"]
    assert stat["high"] - stat["low"] > 0
    ranks = {w: {m: rng.integers(0, 100, size=(2, 50)) for m in METHODS} for w in WORLDS}
    ranks["control"]["C"] = ranks["control"]["A"]
    results = summarise(ranks, [1, 2], 200)
    assert results["A_minus_C"]["control"]["HR@5"] == {"mean": 0.0, "low": 0.0, "high": 0.0}


@pytest.mark.slow
def test_quick_reproduce_writes_every_world_method_and_interval_without_prompt_leakage(tmp_path: Path):
    out = tmp_path / "reproduce"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RREC_CACHE": str(tmp_path / "cache")}
    command = [str(Path(sys.executable).parent / "rrec"), "reproduce", "--out", str(out), "--quick"]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    from training.data import load_split
    from training.prompts import PromptSettings, build_user_turn

    test_rows = load_split(str(out / "world" / "registry"), "known_answer_world", None, "test").to_list()
    assert results["n"] == len(test_rows) > 0
    assert results["seeds"] == [1]
    for world in WORLDS:
        assert set(results[world]) == set(METHODS)
        for method in METHODS:
            for metric in METRICS:
                stat = results[world][method][metric]
                assert 0.0 <= stat["low"] <= stat["mean"] <= stat["high"] <= 1.0, (world, method, metric, stat)
    # Methods that read no rationale are the same model in both worlds.
    for method in ("C", "random", "popularity", "sasrec"):
        assert results["planted"][method] == results["control"][method]
    markdown = (out / "results.md").read_text()
    assert all(f"| {method} |" in markdown for method in METHODS)
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # No shortlist leak: the prompt every LLM variant saw lists none of the ranked candidates.
    protocol = results["protocol"]
    assert protocol["prompt_candidates"] == 0 and protocol["candidates_ranked"] == 100
    prompt = PromptSettings(history_k=protocol["history_k"], num_candidates=protocol["prompt_candidates"])
    for row in test_rows:
        turn = build_user_turn(row, prompt)
        assert not any(candidate["title"] in turn for candidate in row["candidates"])
