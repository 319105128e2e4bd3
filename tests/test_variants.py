"""`rrec train variants`: A and C trained once on the same data, A, B and C evaluated in one table."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import typer
from release_fixture import make_release
from typer.testing import CliRunner

from training.cli import register
from training.variants import VARIANTS, markdown_table

METRICS = {"HR@1", "HR@5", "NDCG@5", "n", "gen_HR@1", "valid_rate", "hallucination_rate"}


def test_variants_table_layout():
    metrics = {"HR@1": 0.25, "HR@5": 0.5, "NDCG@5": 0.375, "n": 4, "gen_HR@1": 0.0, "valid_rate": 1.0, "hallucination_rate": 0.0}
    table = markdown_table({"A": metrics, "C": metrics})
    lines = table.strip().splitlines()
    assert lines[0].startswith("| Variant | Trained with rationale | Infers rationale | HR@1 | HR@5 | NDCG@5")
    assert lines[2] == "| A | yes | yes | 25.00 | 50.00 | 37.50 | 0.00 | 100.00 | 0.00 | 4 |"
    assert lines[3].startswith("| C | no | yes |") and len(lines) == 4  # B was not given
    assert [(v.name, v.model_variant, v.infers_rationale) for v in VARIANTS] == [("A", "A", True), ("B", "A", False), ("C", "C", True)]


@pytest.mark.slow
def test_variants_command_trains_two_models_and_evaluates_three_variants(tmp_path):
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        "sft:\n  history_k: 2\n  num_candidates: 3\n  batch_size: 8\n  eval_steps: 2\n  eval_holdout: 4\n  tiny_vocab_size: 400\n"
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
                "--config",
                "grocery",
                "--output",
                str(tmp_path / "out"),
                "--settings",
                str(settings),
                "--model",
                "tiny",
                "--full",
                "--max-steps",
                "2",
                "--limit",
                "3",
            ],
        )
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    results = json.loads((out / "variants.json").read_text())
    assert set(results) == {"A", "B", "C"}
    for metrics in results.values():
        assert set(metrics) >= METRICS and metrics["n"] == 3
        assert all(0.0 <= metrics[key] <= 1.0 for key in METRICS - {"n"})
    # two trainings: B evaluates A's model with the item-only prompt
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["A", "C"]
    assert json.loads((out / "A" / "training_config.json").read_text())["with_rationale"] is True
    assert json.loads((out / "C" / "training_config.json").read_text())["with_rationale"] is False
    generations = {name: pq.read_table(out / f"generations_{name}.parquet").to_pylist() for name in "ABC"}
    assert [row["infer_rationale"] for row in generations["B"]] == [False] * 3
    assert [row["infer_rationale"] for row in generations["A"]] == [True] * 3
    assert "| B | yes | no |" in (out / "variants.md").read_text()
