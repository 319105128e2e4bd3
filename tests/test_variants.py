"""`rrec train variants`: A and C trained once on the same rows, A, B, C and SFT+GRPO evaluated in one table."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import typer
from release_fixture import make_release
from typer.testing import CliRunner

from training.cli import register
from training.paper_variants import VARIANTS
from training.variants import markdown_table

METRICS = {"HR@1", "HR@5", "NDCG@5", "n", "gen_HR@1", "valid_rate", "hallucination_rate"}


def test_variants_table_layout():
    metrics = {
        "HR@1": 0.25, "HR@5": 0.5, "NDCG@5": 0.375, "n": 4, "candidates": 100, "gen_HR@1": 0.0, "valid_rate": 1.0,
        "hallucination_rate": 0.0, "eval_item_loss": 1.25, "eval_rationale_loss": None,
    }  # fmt: skip
    table = markdown_table({"A": metrics, "C": metrics})
    lines = table.strip().splitlines()
    assert lines[0].startswith("| Variant | Trained with rationale | Infers rationale | HR@1 | HR@5 | NDCG@5")
    assert lines[2] == "| A | yes | yes | 25.00 | 50.00 | 37.50 | 0.00 | 100.00 | 0.00 | 1.250 | - | 4 | 100 |"
    assert lines[3].startswith("| C | no | yes |") and len(lines) == 4  # B was not given
    assert [(v.name, v.model_variant, v.infers_rationale) for v in VARIANTS] == [("A", "A", True), ("B", "A", False), ("C", "C", True)]


@pytest.mark.slow
def test_variants_command_trains_a_c_and_grpo_and_evaluates_four_rows(tmp_path):
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        "sft:\n  history_k: 2\n  batch_size: 8\n  eval_steps: 2\n  eval_holdout: 4\n  tiny_vocab_size: 400\n"
        "grpo:\n  batch_size: 2\n  num_generations: 2\n  max_completion_length: 8\n  limit_train: 2\n"
        "evaluate:\n  max_new_tokens: 8\n  batch_size: 4\n"
    )
    app = typer.Typer()
    register(app)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RREC_CACHE", str(tmp_path / "cache"))
        release = make_release(tmp_path / "registry", n_users=12)
        result = CliRunner().invoke(
            app,
            [
                "train",
                "variants",
                "--dataset",
                str(release),
                "--subset",
                "grocery",
                "--output",
                str(tmp_path / "out"),
                "--config",
                str(settings),
                "--model",
                "tiny",
                "--full",
                "--max-steps",
                "2",
                "--limit",
                "3",
                "--grpo-max-steps",
                "1",
            ],
        )
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    results = json.loads((out / "variants.json").read_text())
    assert set(results) == {"A", "B", "C", "SFT+GRPO"}
    for metrics in results.values():
        assert set(metrics) >= METRICS and metrics["n"] == 3 and metrics["candidates"] == 20
        assert all(0.0 <= metrics[key] <= 1.0 for key in METRICS - {"n"})
    # two SFT trainings (B evaluates A's model with the item-only prompt) and GRPO on A
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["A", "A_grpo", "C"]
    record_a = json.loads((out / "A" / "training_config.json").read_text())
    record_c = json.loads((out / "C" / "training_config.json").read_text())
    assert record_a["with_rationale"] is True and record_c["with_rationale"] is False
    # A and C are trained and checked on the same rows; C has item tokens only.
    assert record_a["rows_fingerprint"] == record_c["rows_fingerprint"]
    assert record_a["rows"]["train"] == record_c["rows"]["train"] and record_a["rows"]["eval_source"] == record_c["rows"]["eval_source"]
    assert record_a["eval_item_loss"] > 0 and record_a["eval_rationale_loss"] > 0
    assert record_c["eval_item_loss"] > 0 and record_c["eval_rationale_loss"] is None
    assert results["A"]["eval_item_loss"] == record_a["eval_item_loss"] == results["B"]["eval_item_loss"]
    assert json.loads((out / "A_grpo" / "training_config.json").read_text())["sft_model"] == str((out / "A").resolve())
    generations = {name: pq.read_table(out / f"generations_{name}.parquet").to_pylist() for name in "ABC"}
    assert [row["infer_rationale"] for row in generations["B"]] == [False] * 3
    assert [row["infer_rationale"] for row in generations["A"]] == [True] * 3
    table = (out / "variants.md").read_text()
    assert "| B | yes | no |" in table and "| SFT+GRPO | yes | yes |" in table and "item loss" in table
