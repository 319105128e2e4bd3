"""SFT of the tiny offline model on a generated release: loss goes down, outputs load, resume works."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from release_fixture import make_release
from typer.testing import CliRunner

from training.cli import register
from training.models import load_for_inference
from training.prompts import PromptSettings, build_messages
from training.sft import SFTSettings, run_sft

app = typer.Typer()
register(app)

TINY_SFT = dict(model="tiny", history_k=3, num_candidates=4, batch_size=8, logging_steps=1, tiny_vocab_size=400)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RREC_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield make_release(tmp_path_factory.mktemp("registry"), n_users=24, annotated_splits=("train", "validation"))


@pytest.mark.slow
def test_lora_sft_lowers_validation_loss_and_saves_a_loadable_adapter(release, tmp_path):
    settings = SFTSettings(**TINY_SFT, variant="A", max_steps=8, eval_steps=8, learning_rate=5e-3, lora_r=8)
    result = run_sft(str(release), "grocery", "v1.0.0", tmp_path / "sft", settings)

    assert result.eval_loss_after < result.eval_loss_before - 0.1
    record = json.loads((tmp_path / "sft" / "training_config.json").read_text())
    assert record["dataset"]["revision"] == "v1.0.0" and record["dataset"]["kind"] == "registry"
    assert len(record["dataset"]["commit"]) == 40
    assert record["rows"]["eval_source"] == "validation"  # validation rows are annotated in this release
    assert record["adapter"] is True and (tmp_path / "sft" / "adapter_config.json").exists()
    assert record["prompt_version"] and record["settings"]["variant"] == "A"

    model, tokenizer = load_for_inference(tmp_path / "sft")
    row = {
        "user_id": "u",
        "history": [{"title": "Lakeside Green Tea Pack 1", "rating": 5.0}],
        "candidates": [{"parent_asin": "x", "title": "Lakeside Green Tea Pack 2"}],
        "target_index": 0,
    }
    prompt = tokenizer.apply_chat_template(
        build_messages(row, PromptSettings(history_k=3, num_candidates=4), True),
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        generated = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]


@pytest.mark.slow
def test_rationale_variant_without_validation_rationales_evaluates_on_held_out_train_rows(tmp_path):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RREC_CACHE", str(tmp_path / "cache"))
        release = make_release(tmp_path / "registry", n_users=16)
        settings = SFTSettings(**TINY_SFT, variant="B", max_steps=1, eval_steps=1, eval_holdout=4, early_stopping_patience=0)
        run_sft(str(release), "grocery", None, tmp_path / "sft", settings)
    record = json.loads((tmp_path / "sft" / "training_config.json").read_text())
    assert record["rows"] == {
        "train": 12,
        "eval": 4,
        "eval_source": "train_holdout",
        "skipped_without_rationale": 0,
        "skipped_without_title": 0,
    }
    assert record["with_rationale"] is True


@pytest.mark.slow
def test_cli_full_fine_tuning_resumes_from_its_last_checkpoint(release, tmp_path):
    out = tmp_path / "c"
    common = [
        "train",
        "sft",
        "--dataset",
        str(release),
        "--subset",
        "grocery",
        "--output",
        str(out),
        "--model",
        "tiny",
        "--tiny-hidden-size",
        "32",
        "--tiny-num-layers",
        "1",
        "--tiny-num-heads",
        "2",
        "--variant",
        "C",
        "--full",
        "--history-k",
        "3",
        "--num-candidates",
        "4",
        "--batch-size",
        "8",
        "--eval-steps",
        "2",
        "--learning-rate",
        "3e-3",
    ]
    runner = CliRunner()
    first = runner.invoke(app, [*common, "--max-steps", "2"])
    assert first.exit_code == 0, first.output
    assert "eval loss" in first.output and "eval loss on item tokens" in first.output

    again = runner.invoke(app, [*common, "--max-steps", "4"])
    assert again.exit_code == 2 and "already holds a trained model" in again.output

    resumed = runner.invoke(app, [*common, "--max-steps", "4", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    record = json.loads((out / "training_config.json").read_text())
    assert record["resumed_from"].endswith("checkpoint-2") and record["global_step"] == 4
    assert record["adapter"] is False and (out / "model.safetensors").exists()
    assert record["rows"]["eval_source"] == "validation" and record["with_rationale"] is False
    model, _ = load_for_inference(out)
    assert model.config.model_type == "gemma3_text"
    # The model size options reached the tiny model.
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.num_attention_heads) == (32, 1, 2)


def test_resume_without_checkpoints_is_a_clear_cli_error(release, tmp_path):
    # The old spelling of the subset (--config NAME) still works, with a deprecation message.
    result = CliRunner().invoke(
        app,
        [
            "train",
            "sft",
            "--dataset",
            str(release),
            "--config",
            "grocery",
            "--output",
            str(tmp_path / "none"),
            "--model",
            "tiny",
            "--resume",
        ],
    )
    assert result.exit_code == 2
    assert "no checkpoint to resume from" in result.output
    assert "deprecated: --config grocery names a dataset subset; use --subset grocery" in result.stderr


def test_report_to_an_integration_that_is_not_installed_is_a_clear_error_before_training(release, tmp_path):
    from transformers.integrations import get_available_reporting_integrations

    if "tensorboard" in get_available_reporting_integrations():
        pytest.skip("tensorboard is installed here")
    args = ["train", "sft", "--dataset", str(release), "--subset", "grocery", "--output", str(tmp_path / "m"), "--model", "tiny"]
    result = CliRunner().invoke(app, [*args, "--report-to", "tensorboard"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--report-to tensorboard: not installed here" in result.output and "--report-to none" in result.output
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_c_trains_and_is_checked_on_the_rows_a_uses_and_losses_are_split(tmp_path):
    """Without validation rationales A is checked on held-out train rows: C is checked (and trains) on exactly those rows too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RREC_CACHE", str(tmp_path / "cache"))
        release = make_release(tmp_path / "registry", n_users=16, annotated_splits=("train",))
        records = {}
        for variant in ("A", "C"):
            settings = SFTSettings(**TINY_SFT, variant=variant, max_steps=1, eval_steps=1, eval_holdout=4, early_stopping_patience=0)
            result = run_sft(str(release), "grocery", None, tmp_path / variant, settings)
            records[variant] = json.loads((tmp_path / variant / "training_config.json").read_text())
            assert result.eval_item_loss == records[variant]["eval_item_loss"] > 0
    assert records["A"]["rows_fingerprint"] == records["C"]["rows_fingerprint"]
    assert records["C"]["rows"]["eval_source"] == "train_holdout" == records["A"]["rows"]["eval_source"]
    assert records["A"]["eval_rationale_loss"] > 0 and records["C"]["eval_rationale_loss"] is None
    assert records["A"]["loss_parts_tokens"]["rationale"] > records["A"]["loss_parts_tokens"]["item"] > 0


@pytest.mark.slow
def test_training_stops_early_when_validation_loss_stops_improving(release, tmp_path):
    """A learning rate too small to move fp32 weights: validation loss never improves, so the
    run stops after `early_stopping_patience` evaluations instead of running all its steps."""
    settings = SFTSettings(**TINY_SFT, variant="A", max_steps=30, eval_steps=1, learning_rate=1e-12, early_stopping_patience=2, full=True)
    result = run_sft(str(release), "grocery", "v1.0.0", tmp_path / "sft", settings)
    assert result.global_step == 3, result  # step 1 sets the best loss, steps 2 and 3 do not improve it
    assert result.best_checkpoint is not None and result.best_checkpoint.endswith("checkpoint-1")
