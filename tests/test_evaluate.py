"""LLM evaluation: KV-cached candidate scoring, generation mapping, `rrec evaluate` end to end."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch
import typer
from typer.testing import CliRunner

from core.config import load_config, section
from core.rationale_format import ITEM_CLOSE, ITEM_OPEN, THINK_CLOSE, THINK_OPEN
from core.schemas import FILTERED
from training.eval_cli import register
from training.evaluate import CandidateScorer, EvalSettings, Generator, evaluate, evaluate_model, prompt_settings_for
from training.metrics import ranking_metrics, target_rank
from training.models import TinyModelSettings, build_tiny_model, train_tiny_tokenizer, write_training_config
from training.prompts import PromptSettings, build_messages

sys.path.insert(0, str(Path(__file__).parent))
from release_fixture import _catalog, make_release

TINY = TinyModelSettings(vocab_size=400, hidden_size=32, num_layers=2, num_heads=2, max_positions=1024)
# The rows of the `rows` fixture have 8 candidates: the model was trained with all of them listed.
TRAINED_PROMPT = {"history_k": 3, "num_candidates": 8, "seed": 7}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved, untrained tiny Gemma-3 model whose training record names its prompt settings."""
    titles = [item["title"] for item in _catalog()]
    texts = [*titles, "Purchase history, oldest first: rated Candidates: Which item will the user buy next?"] * 3
    tokenizer = train_tiny_tokenizer(texts, TINY)
    model = build_tiny_model(tokenizer, TINY, seed=3)
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_training_config(folder, {"stage": "sft", "variant": "A", "with_rationale": True, "settings": TRAINED_PROMPT})
    tokenizer.padding_side = "left"
    return folder, model.eval(), tokenizer


@pytest.fixture
def rows(tmp_path, isolated_caches):
    from training.data import load_split

    release = make_release(tmp_path / "registry", n_users=12, num_negatives=7)
    return release, load_split(str(release), "grocery", "v1.0.0", "test").to_list()


@torch.no_grad()
def _naive_score(model, tokenizer, prefix: list[int], title: str) -> float:
    """Mean log-probability of the answer from one full forward pass over prefix + answer."""
    answer = tokenizer(f"{ITEM_OPEN}{title}{ITEM_CLOSE}", add_special_tokens=False)["input_ids"]
    logits = model(input_ids=torch.tensor([prefix + answer])).logits[0]
    logprobs = logits[len(prefix) - 1 : -1].float().log_softmax(-1)
    return logprobs.gather(-1, torch.tensor(answer)[:, None]).mean().item()


@pytest.mark.parametrize("candidate_batch_size", [1, 3, 32])
def test_kv_cached_batched_scores_equal_full_forward_passes(tiny, candidate_batch_size) -> None:
    _, model, tokenizer = tiny
    titles = [item["title"] for item in _catalog()[:7]] + ["A much longer made up product title with many words"]
    prefix = tokenizer("<bos><start_of_turn>user\nWhich item?<end_of_turn>\n<start_of_turn>model\n", add_special_tokens=False)["input_ids"]
    scores = CandidateScorer(model, tokenizer, candidate_batch_size).score(prefix, titles)
    expected = [_naive_score(model, tokenizer, prefix, title) for title in titles]
    assert scores == pytest.approx(expected, abs=1e-4)


def test_candidates_without_a_title_rank_last(tiny) -> None:
    _, model, tokenizer = tiny
    titles = ["Harbor Coffee Beans Pack 2", "", "Lakeside Green Tea Pack 1"]
    scores = CandidateScorer(model, tokenizer, 2).score([1, 5, 6], titles)
    assert math.isnan(scores[1]) and not math.isnan(scores[0]) and not math.isnan(scores[2])
    assert target_rank(scores, 1) == 2


def test_rationale_prefix_ends_at_the_generated_think_block(tiny) -> None:
    _, model, tokenizer = tiny
    generator = Generator(model, tokenizer, max_new_tokens=8)
    prompt = [1, 2, 3]
    closed = f"{THINK_OPEN}likes tea{THINK_CLOSE}{ITEM_OPEN}Green Tea{ITEM_CLOSE}"
    answer = tokenizer(closed, add_special_tokens=False)["input_ids"]
    expected = prompt + tokenizer(f"{THINK_OPEN}likes tea{THINK_CLOSE}", add_special_tokens=False)["input_ids"]
    assert generator.rationale_prefix(prompt, answer, closed) == expected
    # An unclosed rationale is closed where the item block starts.
    unclosed = f"{THINK_OPEN}likes tea{ITEM_OPEN}Green Tea"
    answer = tokenizer(unclosed, add_special_tokens=False)["input_ids"]
    assert generator.rationale_prefix(prompt, answer, unclosed) == expected


def test_prompt_settings_follow_the_training_record_unless_overridden(tiny) -> None:
    folder, _, _ = tiny
    assert prompt_settings_for(folder, EvalSettings()) == PromptSettings(**TRAINED_PROMPT)
    assert prompt_settings_for(folder, EvalSettings(num_candidates=0)).num_candidates == 0
    # The config file's top-level seed does not replace the seed the model was trained with.
    assert prompt_settings_for(folder, section(load_config(), "evaluate", EvalSettings)).seed == TRAINED_PROMPT["seed"]


def test_evaluation_ranks_rows_by_candidate_likelihood(tiny, rows) -> None:
    _, model, tokenizer = tiny
    test_rows = rows[1][:5]
    settings = EvalSettings(max_new_tokens=12, batch_size=2, candidate_batch_size=5)
    prompts = PromptSettings(**TRAINED_PROMPT)
    run = evaluate_model(model, tokenizer, test_rows, infer_rationale=False, prompt_settings=prompts, settings=settings)
    # Item-only inference scores the candidates right after the prompt: recompute independently.
    generator = Generator(model, tokenizer, settings.max_new_tokens)
    expected_ranks = []
    for row in test_rows:
        prompt = generator.prompt_ids(build_messages(row, prompts, infer_rationale=False))
        scores = [_naive_score(model, tokenizer, prompt, c["title"]) for c in row["candidates"]]
        expected_ranks.append(target_rank(scores, row["target_index"]))
    assert [r.rank for r in run.rows] == expected_ranks
    expected = ranking_metrics(expected_ranks)
    assert {k: run.metrics[k] for k in expected} == pytest.approx(expected)
    outcomes = [r.outcome for r in run.rows]
    missing = sum(not o.has_item for o in outcomes) / len(outcomes)
    assert run.metrics["valid_rate"] + run.metrics["hallucination_rate"] + missing == pytest.approx(1.0)


def test_evaluate_saves_generations_with_the_sequence_key(tiny, rows, tmp_path) -> None:
    folder, _, _ = tiny
    release, test_rows = rows
    generations = tmp_path / "gen" / "A.parquet"
    settings = EvalSettings(limit=5, max_new_tokens=10, generations=generations)
    metrics = evaluate(folder, str(release), "grocery", "v1.0.0", infer_rationale=True, settings=settings)
    assert set(metrics) >= {"HR@1", "HR@5", "NDCG@5", "n", "gen_HR@1", "valid_rate", "hallucination_rate"}
    assert metrics["n"] == 5 and metrics["candidates"] == 8
    assert 0.0 <= metrics["HR@1"] <= metrics["HR@5"] <= 1.0
    saved = pq.read_table(generations).to_pylist()
    assert [r["user_id"] for r in saved] == [r["user_id"] for r in test_rows[:5]]
    assert all(r["split"] == "test" and r["infer_rationale"] for r in saved)
    assert [r["target_parent_asin"] for r in saved] == [r["target"]["parent_asin"] for r in test_rows[:5]]
    assert sum(r["hit"] for r in saved) / 5 == pytest.approx(metrics["gen_HR@1"])
    # The file reads as a `filtered` table (key + rationale), the judge's input shape.
    as_filtered = pads.dataset(str(generations), format="parquet", schema=FILTERED).to_table().to_pylist()
    assert [(r["user_id"], r["rationale"]) for r in as_filtered] == [(r["user_id"], r["rationale"]) for r in saved]


def _rrec_app() -> typer.Typer:
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    return app


def test_evaluate_command_adds_the_variant_to_the_results_table(tiny, rows, tmp_path) -> None:
    folder, _, _ = tiny
    release, _ = rows
    output = tmp_path / "results.json"
    output.write_text(json.dumps({"random": {"HR@1": 0.1, "HR@5": 0.5, "NDCG@5": 0.3, "n": 3, "candidates": 8}}))
    args = ["evaluate", "--model", str(folder), "--dataset", str(release), "--subset", "grocery", "--revision", "v1.0.0"]
    result = CliRunner().invoke(_rrec_app(), [*args, "--output", str(output), "--variant", "B", "--limit", "3", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    saved = json.loads(output.read_text())
    assert list(saved) == ["random", "B"] and saved["B"]["n"] == 3 and saved["B"]["candidates"] == 8
    assert "| B |" in output.with_suffix(".md").read_text()
    generations = pq.read_table(tmp_path / "results.B.generations.parquet")
    assert generations.num_rows == 3 and not any(generations.column("infer_rationale").to_pylist())


def test_evaluate_command_rejects_an_unknown_variant_in_one_line(tiny, tmp_path) -> None:
    folder, _, _ = tiny
    args = ["evaluate", "--model", str(folder), "--dataset", str(tmp_path), "--subset", "grocery", "--output", str(tmp_path / "r.json")]
    result = CliRunner().invoke(_rrec_app(), [*args, "--variant", "D"])
    assert result.exit_code == 2
    assert "--variant must be A, B or C" in result.output


def test_evaluate_refuses_a_prompt_listing_a_subset_of_the_candidates(tiny, rows, tmp_path) -> None:
    folder, model, tokenizer = tiny
    release, test_rows = rows
    args = ["evaluate", "--model", str(folder), "--dataset", str(release), "--subset", "grocery", "--output", str(tmp_path / "r.json")]
    result = CliRunner().invoke(_rrec_app(), [*args, "--num-candidates", "5"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "would list 5 of the 8 candidates" in result.output and "--num-candidates 0" in result.output
    assert not (tmp_path / "r.json").exists()
    # The library function refuses the same settings; none and all are accepted.
    shortlist = PromptSettings(history_k=3, num_candidates=5)
    with pytest.raises(ValueError, match="5 of the 8 candidates"):
        evaluate_model(model, tokenizer, test_rows[:1], infer_rationale=False, prompt_settings=shortlist, settings=EvalSettings())
    for shown in (0, 8):
        run = evaluate_model(
            model, tokenizer, test_rows[:1], infer_rationale=False, prompt_settings=PromptSettings(num_candidates=shown),
            settings=EvalSettings(max_new_tokens=4),
        )  # fmt: skip
        assert run.metrics["candidates"] == 8
