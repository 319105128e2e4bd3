"""Random, popularity and SASRec baselines on the exact candidates of the evaluated rows."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from training.baselines import (
    BaselineSettings,
    evaluate_baselines,
    popularity_counts,
    popularity_scorer,
    random_scorer,
    rank_rows,
    training_sequences,
)
from training.data import load_split
from training.eval_cli import register
from training.sasrec import SasRecConfig, score_candidates, train_sasrec

sys.path.insert(0, str(Path(__file__).parent))
from release_fixture import make_release

NUM_LINES, LINE_LENGTH = 12, 10


def _item(line: int, step: int) -> dict:
    return {"parent_asin": f"L{line:02d}S{step % LINE_LENGTH:02d}", "title": f"Line {line} step {step % LINE_LENGTH}"}


def _learnable_rows(n_users: int, seed: int = 0, num_negatives: int = 19) -> tuple[list[dict], list[dict]]:
    """Train and test rows where both signals exist: lines have Zipf popularity and each user
    walks one line cyclically (the next item is the next step), starting anywhere."""
    rng = random.Random(seed)
    catalog = [_item(line, step) for line in range(NUM_LINES) for step in range(LINE_LENGTH)]
    weights = [1.0 / (rank + 1) for rank in range(NUM_LINES)]
    train, test = [], []
    for user in range(n_users):
        line = rng.choices(range(NUM_LINES), weights)[0]
        start, length = rng.randrange(LINE_LENGTH), rng.randint(4, 7)
        events = [dict(_item(line, start + i), rating=5.0, timestamp=i) for i in range(length)]
        bought = {e["parent_asin"] for e in events}
        pool = [c for c in catalog if c["parent_asin"] not in bought]
        for split, position in (("train", length - 3), ("test", length - 1)):
            candidates = rng.sample(pool, num_negatives)
            target_index = rng.randint(0, num_negatives)
            target = events[position]
            candidates.insert(target_index, {"parent_asin": target["parent_asin"], "title": target["title"]})
            row = {
                "user_id": f"U{user:04d}",
                "history": events[:position],
                "target": {"parent_asin": target["parent_asin"], "title": target["title"]},
                "candidates": candidates,
                "target_index": target_index,
            }
            (train if split == "train" else test).append(row)
    return train, test


def rrec_app() -> typer.Typer:
    """An `rrec` app with this module's commands (independent of other commands' state)."""
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    return app


pytestmark = pytest.mark.usefixtures("one_torch_thread")


FAST_SASREC = {"sasrec_hidden": 32, "sasrec_epochs": 40, "sasrec_lr": 5e-3, "sasrec_max_len": 10, "sasrec_batch_size": 64}


def test_popularity_and_sasrec_beat_random_on_learnable_data() -> None:
    train, test = _learnable_rows(240)
    results = evaluate_baselines(train, test, BaselineSettings(**FAST_SASREC))
    assert set(results) == {"random", "popularity", "sasrec", "shown"}
    assert all(m["n"] == len(test) and m["candidates"] == 20 for m in results.values())
    assert results["popularity"]["NDCG@5"] > results["random"]["NDCG@5"] + 0.05
    assert results["sasrec"]["NDCG@5"] > results["random"]["NDCG@5"] + 0.3
    assert results["sasrec"]["HR@1"] > results["popularity"]["HR@1"]


def test_training_sequences_keep_the_longest_prefix_per_user() -> None:
    rows = [
        {"user_id": "u", "history": [{"parent_asin": "a"}], "target": {"parent_asin": "b"}},
        {"user_id": "u", "history": [{"parent_asin": "a"}, {"parent_asin": "b"}], "target": {"parent_asin": "c"}},
        {"user_id": "v", "history": [{"parent_asin": "c"}, {"parent_asin": "c"}], "target": {"parent_asin": "d"}},
    ]
    sequences = training_sequences(rows)
    assert sequences == {"u": ["a", "b", "c"], "v": ["c", "c", "d"]}
    # A user's repeat of an item counts once.
    assert popularity_counts(sequences) == {"a": 1, "b": 1, "c": 2, "d": 1}


def test_popularity_ranks_the_scripted_candidates_with_position_ties() -> None:
    counts = {"p1": 5, "p2": 9, "p3": 5}
    rows = [{"user_id": "x", "candidates": [{"parent_asin": a} for a in ("p1", "p2", "p3", "new")], "target_index": t} for t in range(4)]
    # p2 (9) first, then p1 and p3 tied at 5 in candidate order, then the unseen item.
    assert rank_rows(rows, popularity_scorer(counts), "popularity") == [1, 0, 2, 3]


def test_random_scores_depend_only_on_seed_and_user() -> None:
    row = {"user_id": "U7", "candidates": [{"parent_asin": str(i)} for i in range(30)], "target_index": 0}
    first = random_scorer(3)(row)
    assert random_scorer(3)(row) == first
    assert random_scorer(4)(row) != first
    assert random_scorer(3)(dict(row, user_id="U8")) != first


def test_sasrec_is_deterministic_and_learns_a_successor_rule() -> None:
    # Items 1..8 in a cycle: after item i comes item i % 8 + 1.
    sequences = [[(start + k) % 8 + 1 for k in range(6)] for start in range(8) for _ in range(6)]
    config = SasRecConfig(hidden=16, blocks=1, max_len=6, epochs=40, batch_size=48, lr=1e-2, dropout=0.0, seed=1)
    model = train_sasrec(sequences, 8, config)
    for start in range(8):
        history = [(start + k) % 8 + 1 for k in range(3)]
        # As in a release, the candidates are items outside the user's own sequence.
        candidates = [item for item in range(1, 9) if item not in history]
        scores = score_candidates(model, history, candidates)
        assert candidates[int(np.argmax(scores))] == (start + 3) % 8 + 1
    again = train_sasrec(sequences, 8, config)
    np.testing.assert_allclose(score_candidates(again, [2, 3, 4], candidates), score_candidates(model, [2, 3, 4], candidates))


def test_sasrec_early_stopping_keeps_the_best_checked_model() -> None:
    sequences = [[1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 1]]
    scripted = iter([0.1, 0.3, 0.2, 0.25, 0.2, 0.9])
    snapshots: list[dict] = []

    def validate(model) -> float:
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scripted)

    config = SasRecConfig(hidden=8, blocks=1, max_len=4, epochs=30, eval_every=2, patience=3, seed=0)
    model = train_sasrec(sequences, 5, config, validate)
    # Checks at epochs 2, 4, 6, 8, 10: no gain after the second for three checks, so it stops
    # before the 0.9 and returns the weights it had at the second check.
    assert len(snapshots) == 5
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, snapshots[1][name])


def test_sasrec_refuses_data_without_transitions() -> None:
    with pytest.raises(ValueError, match="two or more items"):
        train_sasrec([[1], [2]], 2, SasRecConfig(epochs=1))


def test_baselines_command_writes_json_and_table(tmp_path, isolated_caches) -> None:
    registry = make_release(tmp_path / "registry", n_users=60, with_git_tag="v1.0.0")
    output = tmp_path / "results" / "grocery.json"
    result = CliRunner().invoke(
        rrec_app(),
        [
            "baselines", "--dataset", str(registry), "--subset", "grocery", "--revision", "v1.0.0",
            "--output", str(output), "--limit", "25", "--sasrec-epochs", "2", "--sasrec-hidden", "16",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads(output.read_text())
    assert list(saved) == ["random", "popularity", "sasrec", "shown"]
    assert all(m["n"] == 25 and m["candidates"] == 20 and 0.0 <= m["HR@1"] <= m["HR@5"] <= 1.0 for m in saved.values())
    assert "| SASRec |" in output.with_suffix(".md").read_text()


def test_baselines_command_reads_a_settings_file(tmp_path, isolated_caches) -> None:
    registry = make_release(tmp_path / "registry", n_users=12, with_git_tag="v1.0.0")
    settings = tmp_path / "eval.yaml"
    settings.write_text("baselines:\n  methods: [random, popularity]\n  limit: 5\n")
    output = tmp_path / "r.json"
    args = ["baselines", "--dataset", str(registry), "--subset", "grocery", "--output", str(output)]
    result = CliRunner().invoke(rrec_app(), [*args, "--config", str(settings), "--methods", "random"])
    assert result.exit_code == 0, result.output
    assert "deprecated" not in result.output
    # The command line (--methods) overrides the file; the file's limit still applies.
    saved = json.loads(output.read_text())
    assert list(saved) == ["random"] and saved["random"]["n"] == 5


def test_old_spellings_still_work_with_a_deprecation_message(tmp_path, isolated_caches) -> None:
    registry = make_release(tmp_path / "registry", n_users=12, with_git_tag="v1.0.0")
    settings = tmp_path / "eval.yaml"
    settings.write_text("baselines:\n  methods: [popularity]\n  limit: 4\n")
    output = tmp_path / "r.json"
    old = ["baselines", "--dataset", str(registry), "--config", "grocery", "--settings", str(settings), "--output", str(output)]
    result = CliRunner().invoke(rrec_app(), old)
    assert result.exit_code == 0, result.output
    assert "deprecated: --config grocery names a dataset subset; use --subset grocery" in result.stderr
    assert f"deprecated: --settings {settings}; use --config {settings}" in result.stderr
    assert json.loads(output.read_text())["popularity"]["n"] == 4


def test_subset_given_twice_or_missing_is_a_one_line_error(tmp_path, isolated_caches) -> None:
    registry = make_release(tmp_path / "registry", n_users=6, with_git_tag="v1.0.0")
    base = ["baselines", "--dataset", str(registry), "--output", str(tmp_path / "r.json"), "--methods", "random"]
    twice = CliRunner().invoke(rrec_app(), [*base, "--subset", "grocery", "--config", "office"])
    missing = CliRunner().invoke(rrec_app(), base)
    no_file = CliRunner().invoke(rrec_app(), [*base, "--subset", "grocery", "--config", str(tmp_path / "absent.yaml")])
    for result, expected in ((twice, "given twice"), (missing, "add --subset NAME"), (no_file, "no such settings file")):
        assert result.exit_code == 2 and expected in result.output and "Traceback" not in result.output


def test_baselines_command_reports_an_unknown_version_in_one_line(tmp_path, isolated_caches) -> None:
    registry = make_release(tmp_path / "registry", n_users=10, with_git_tag="v1.0.0")
    result = CliRunner().invoke(
        rrec_app(),
        ["baselines", "--dataset", str(registry), "--subset", "grocery", "--revision", "v9.9.9", "--output", str(tmp_path / "r.json")],
    )
    assert result.exit_code == 2
    assert "v9.9.9" in result.output and "error:" in result.output
    assert "Traceback" not in result.output


def test_baselines_learn_every_known_item_and_never_a_validation_or_test_target(tmp_path, isolated_caches) -> None:
    registry = make_release(tmp_path / "registry", n_users=30)
    train, validation, test = (load_split(str(registry), "grocery", "v1.0.0", split).to_list() for split in ("train", "validation", "test"))
    kept = train[::2]  # the self-filter dropped every other user's train row
    sequences = training_sequences(kept, validation)
    # Every user is known, filtered or not: their sequence up to the validation target.
    assert set(sequences) == {row["user_id"] for row in validation}
    test_targets = {row["user_id"]: row["target"]["parent_asin"] for row in test}
    for row in validation:
        known = sequences[row["user_id"]]
        assert known == [event["parent_asin"] for event in row["history"]]
        assert row["target"]["parent_asin"] not in known and test_targets[row["user_id"]] not in known
    for row in kept:
        assert row["target"]["parent_asin"] in sequences[row["user_id"]]


def test_truncated_histories_are_joined_into_one_sequence() -> None:
    # max_history 4: the train row sees a..d then e; the validation history only the last four, c..f.
    letters = "abcdef"
    train = [{"user_id": "u", "history": [{"parent_asin": x} for x in letters[:4]], "target": {"parent_asin": "e"}}]
    validation = [{"user_id": "u", "history": [{"parent_asin": x} for x in letters[2:]], "target": {"parent_asin": "g"}}]
    assert training_sequences(train, validation) == {"u": list(letters)}
    assert training_sequences(train) == {"u": list("abcde")}


def test_shown_sits_at_chance_under_the_protocol_and_far_above_with_a_shortlist(tmp_path, isolated_caches) -> None:
    """A scorer that knows only which candidates the prompt lists: chance when the prompt lists
    all or none (the protocol), far above chance when it lists a shortlist holding the target."""
    registry = make_release(tmp_path / "registry", n_users=400, num_negatives=49, shards=1)
    train, validation, test = (load_split(str(registry), "grocery", "v1.0.0", split).to_list() for split in ("train", "validation", "test"))
    chance = 1 / 50
    results = {
        shown: evaluate_baselines(train, test, BaselineSettings(methods=["shown"], shown_num_candidates=shown), validation)["shown"]
        for shown in (0, 50, 10)
    }
    for protocol in (0, 50):  # the default prompt (no list) and the prompt listing every candidate
        assert results[protocol]["candidates"] == 50
        assert abs(results[protocol]["HR@1"] - chance) < 0.02
        assert abs(results[protocol]["HR@5"] - 5 * chance) < 0.05
    # The old kind of prompt (10 of the 50, the target always among them) leaks the answer.
    assert results[10]["HR@1"] > 3 * chance and results[10]["HR@5"] > 0.4
