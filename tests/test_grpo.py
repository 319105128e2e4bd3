"""GRPO rewards on hand-written completions, and a few GRPO steps on the tiny model."""

from __future__ import annotations

import functools
import json
import math

import pytest
import typer
from release_fixture import make_release
from typer.testing import CliRunner

from training.cli import register
from training.models import load_for_inference
from training.rewards import catalog_keys, format_reward, hit_reward, normalise_title, rank_reward, validity_reward
from training.sft import SFTSettings, run_sft

TARGET = "Lakeside Green Tea Pack 3"
CANDIDATES = [TARGET, "Harbor Coffee Beans Pack 1", "Summit Olive Oil Pack 2"]


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def test_format_reward_wants_exactly_one_think_then_one_item():
    completions = [
        chat(f"<think>same line, next pack</think><item>{TARGET}</item>"),
        chat(f"<item>{TARGET}</item>"),  # no rationale
        chat(f"<item>{TARGET}</item><think>late</think>"),  # wrong order
        chat(f"<think>a</think><think>b</think><item>{TARGET}</item>"),  # two think blocks
        chat(f"<think>a</think><item>{TARGET}</item><item>x</item>"),  # two items
        chat(f"<think>a</think><item>{TARGET}</item> and more"),  # trailing text
        f"<think>plain text completion</think><item>{TARGET}</item>",
    ]
    assert format_reward(completions) == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]


def test_validity_reward_accepts_candidates_and_catalog_titles_exactly_or_normalised():
    catalog = catalog_keys(["Willow Honey Jar Pack 8", None])
    completions = [
        chat("<think>r</think><item>Harbor Coffee Beans Pack 1</item>"),  # a candidate
        chat("<think>r</think><item>  harbor coffee-beans pack 1 </item>"),  # normalised candidate
        chat("<think>r</think><item>Willow Honey Jar Pack 8</item>"),  # in the catalog only
        chat("<think>r</think><item>Moon Cheese Pack 9</item>"),  # hallucinated
        chat("<think>r</think>no item at all"),
    ]
    rewards = validity_reward(completions, candidate_titles=[CANDIDATES] * 5, catalog_titles=catalog)
    assert rewards == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert validity_reward(completions[2:3], candidate_titles=[CANDIDATES]) == [0.0]  # without the catalog


def test_hit_reward_is_the_target_only():
    completions = [
        chat(f"<think>r</think><item>{TARGET}</item>"),
        chat("<think>r</think><item>LAKESIDE green tea, pack 3</item>"),
        chat("<think>r</think><item>Lakeside Green Tea Pack 4</item>"),
        chat(f"<item>{TARGET}</item>"),  # malformed but names the target
    ]
    assert hit_reward(completions, target_title=[TARGET] * 4) == [1.0, 1.0, 0.0, 1.0]
    assert normalise_title("LAKESIDE green tea, pack 3") == normalise_title(TARGET)


def test_rank_reward_penalises_the_policys_most_produced_wrong_item_most():
    wrong_often, wrong_once = "Harbor Coffee Beans Pack 1", "Summit Olive Oil Pack 2"
    group_a = [
        chat(f"<think>r</think><item>{wrong_once}</item>"),
        chat(f"<think>r</think><item>{wrong_often}</item>"),
        chat(f"<think>r</think><item>{TARGET}</item>"),
        chat(f"<think>r</think><item>{wrong_often}</item>"),
    ]
    group_b = [chat("<think>no answer</think>"), chat(f"<think>r</think><item>{wrong_once}</item>")]
    rewards = rank_reward(group_a + group_b, target_title=[TARGET] * 6, prompt_id=["a"] * 4 + ["b"] * 2)
    # group a: wrong_often is rank 1 (-1/log2 2 = -1), wrong_once rank 2 (-1/log2 3), the target +1
    assert rewards[:4] == pytest.approx([-1 / math.log2(3), -1.0, 1.0, -1.0])
    # group b: a missing item ranks first, the other wrong item second
    assert rewards[4:] == pytest.approx([-1.0, -1 / math.log2(3)])
    # groups are independent of their order in the batch
    shuffled = rank_reward((group_b + group_a)[::-1], target_title=[TARGET] * 6, prompt_id=(["b"] * 2 + ["a"] * 4)[::-1])
    assert sorted(shuffled) == pytest.approx(sorted(rewards))


def test_reward_functions_are_named_for_separate_logging():
    from trl.trainer.utils import get_callable_name

    from training.grpo import reward_functions

    names = [get_callable_name(func) for func in reward_functions(["x"])]
    assert names == ["format_reward", "validity_reward", "hit_reward", "rank_reward"]
    assert isinstance(reward_functions(["x"])[1], functools.partial)


@pytest.mark.slow
def test_grpo_runs_a_few_steps_from_an_sft_adapter_and_logs_each_reward(tmp_path):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RREC_CACHE", str(tmp_path / "cache"))
        release = make_release(tmp_path / "registry", n_users=12)
        sft = SFTSettings(model="tiny", history_k=2, num_candidates=3, max_steps=2, eval_steps=2, eval_holdout=4, tiny_vocab_size=400)
        run_sft(str(release), "grocery", "v1.0.0", tmp_path / "sft", sft)

        app = typer.Typer()
        register(app)
        result = CliRunner().invoke(
            app,
            [
                "train",
                "grpo",
                "--sft-model",
                str(tmp_path / "sft"),
                "--dataset",
                str(release),
                "--config",
                "grocery",
                "--output",
                str(tmp_path / "grpo"),
                "--max-steps",
                "2",
                "--batch-size",
                "4",
                "--num-generations",
                "2",
                "--max-completion-length",
                "12",
                "--limit-train",
                "4",
                "--beta",
                "0.04",
                "--hit-weight",
                "2.0",
            ],
        )
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "grpo" / "training_config.json").read_text())
    assert record["global_step"] == 2
    assert set(record["rewards_last"]) == {"format_reward", "validity_reward", "hit_reward", "rank_reward", "total"}
    assert record["settings"]["hit_weight"] == 2.0 and record["dataset"]["revision"] == "v1.0.0"
    # the prompts follow the SFT run's prompt settings
    assert record["prompt_settings"] == {"history_k": 2, "num_candidates": 3, "seed": 42}
    assert not (tmp_path / "grpo" / "ref").exists()  # only the policy adapter is saved
    model, _ = load_for_inference(tmp_path / "grpo")
    assert model.config.model_type == "gemma3_text"


def test_batch_must_hold_whole_groups(tmp_path):
    from training.grpo import GRPOSettings, run_grpo

    with pytest.raises(ValueError, match="multiple of --num-generations"):
        run_grpo(tmp_path, "x/y", "grocery", None, tmp_path / "out", GRPOSettings(batch_size=6, num_generations=4))


def test_a_folder_that_is_not_an_sft_model_is_refused_before_anything_is_written(tmp_path):
    from training.grpo import GRPOSettings, run_grpo

    with pytest.raises(FileNotFoundError, match="run `rrec train sft` first"):
        run_grpo(tmp_path / "missing", "x/y", "grocery", None, tmp_path / "out", GRPOSettings(batch_size=4, num_generations=2))
    assert not (tmp_path / "out").exists()
