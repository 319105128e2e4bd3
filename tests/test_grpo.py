"""GRPO rewards on hand-written completions, and a few GRPO steps on the tiny model."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import typer
from release_fixture import item_id, make_release
from typer.testing import CliRunner

from release.checksums import file_checksums
from training.cli import register
from training.models import load_for_inference
from training.rewards import (
    catalog_keys,
    format_reward,
    hit_reward,
    normalise_title,
    rank_reward,
    reward_group_std,
    validity_reward,
)
from training.sft import SFTSettings, run_sft

TARGET = "Lakeside Green Tea Pack 3"
CANDIDATES = [TARGET, "Harbor Coffee Beans Pack 1", "Summit Olive Oil Pack 2"]


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


UNTITLED_LINE = 1  # "Harbor Coffee Beans": its packs lose their titles in `untitled_release`
WRONG_ITEM = "Lakeside Green Tea Pack 1"


def untitled_release(folder: Path, n_users: int = 24) -> Path:
    """A release folder (no registry) where one product line was released without metadata: no titles."""
    release = make_release(folder, n_users=n_users, with_git_tag=None, shards=1)
    prefix = item_id(UNTITLED_LINE, 1)[:4]

    def strip(item: dict | None) -> dict | None:
        return {**item, "title": None} if item and item["parent_asin"].startswith(prefix) else item

    for path in sorted((release / "data").glob("*/*.parquet")):
        table = pq.read_table(path)
        rows = table.to_pylist()
        for row in rows:
            if "candidates" in row:
                row["history"] = [strip(event) for event in row["history"]]
                row["candidates"] = [strip(candidate) for candidate in row["candidates"]]
                row["target"] = strip(row["target"])
            else:
                row.update(strip(row))
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    manifest = json.loads((release / "manifest.json").read_text())
    manifest["files"] = file_checksums(release)
    (release / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return release


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
    assert names == ["format_reward", "validity_reward", "hit_reward", "rank_reward", "reward_group_std"]
    assert isinstance(reward_functions(["x"])[1], functools.partial)


POLICIES = {
    "target": f"<think>same line, next pack</think><item>{TARGET}</item>",
    "wrong candidate": "<think>r</think><item>Harbor Coffee Beans Pack 1</item>",
    "untitled candidate": "<think>r</think><item>untitled item B00100003</item>",
    "hallucinated": "<think>r</think><item>Moon Cheese Pack 9</item>",
    "nothing": "<think>I cannot decide</think>",
    "empty item": "<think>r</think><item>!!</item>",
}


@pytest.mark.parametrize("target", [TARGET, None], ids=["titled target", "untitled target"])
def test_every_reward_scores_every_kind_of_policy_output_without_raising(target):
    """Candidates and targets of items without metadata have no title (None): never a crash, never a match."""
    candidates = [TARGET, "Harbor Coffee Beans Pack 1", None, "Summit Olive Oil Pack 2"]
    completions = [chat(text) for text in POLICIES.values()]
    n = len(completions)
    columns = {"target_title": [target] * n, "candidate_titles": [candidates] * n, "prompt_id": ["p"] * n}
    catalog = catalog_keys([TARGET, "Harbor Coffee Beans Pack 1", None])
    rewards = {
        "format": format_reward(completions, **columns),
        "validity": validity_reward(completions, catalog_titles=catalog, **columns),
        "hit": hit_reward(completions, **columns),
        "rank": rank_reward(completions, **columns),
        "spread": reward_group_std(completions, weights=[0.5, 0.5, 1.0, 0.5], catalog_titles=catalog, **columns),
    }
    by_policy = {name: {kind: values[i] for kind, values in rewards.items()} for i, name in enumerate(POLICIES)}
    assert by_policy["wrong candidate"]["validity"] == 1.0 and by_policy["wrong candidate"]["hit"] == 0.0
    for name in ("untitled candidate", "hallucinated", "nothing", "empty item"):
        assert by_policy[name]["validity"] == 0.0 and by_policy[name]["hit"] == 0.0 and by_policy[name]["rank"] < 0
    assert by_policy["nothing"]["format"] == 0.0 and by_policy["hallucinated"]["format"] == 1.0
    if target is None:  # nothing can name an untitled target
        assert rewards["hit"] == [0.0] * n and by_policy["target"]["rank"] < 0
    else:
        assert by_policy["target"]["hit"] == 1.0 and by_policy["target"]["rank"] == 1.0
    assert len(set(rewards["spread"])) == 1 and rewards["spread"][0] > 0  # one group: one spread, not zero


def test_reward_group_std_is_the_spread_of_the_weighted_total_within_each_group():
    same = chat(f"<think>r</think><item>{TARGET}</item>")
    wrong = chat("<think>r</think><item>Moon Cheese Pack 9</item>")
    columns = {"target_title": [TARGET] * 4, "candidate_titles": [[TARGET]] * 4, "prompt_id": ["a", "a", "b", "b"]}
    spread = reward_group_std([same, same, same, wrong], weights=[0.0, 0.0, 1.0, 0.0], **columns)
    # group a: both hit (1, 1): no spread, no signal; group b: hit and miss (1, 0): std 0.5
    assert spread == pytest.approx([0.0, 0.0, 0.5, 0.5])


def test_grpo_prompts_leave_out_and_count_untitled_targets(tmp_path, isolated_caches):
    from training.data import load_split
    from training.grpo import to_grpo_prompts
    from training.prompts import PromptSettings

    release = untitled_release(tmp_path / "release")
    rows = load_split(str(release), "grocery", None, "train")
    untitled = sum(not row["target"]["title"] for row in rows)
    built = to_grpo_prompts(rows, PromptSettings(num_candidates=20))
    assert untitled > 0 and built.skipped_without_title == untitled
    assert len(built.dataset) == len(rows) - untitled and all(built.dataset["target_title"])
    assert any(None in titles for titles in built.dataset["candidate_titles"])


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
                "--subset",
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
    assert set(record["rewards_last"]) == {
        "format_reward", "validity_reward", "hit_reward", "rank_reward", "reward_group_std", "total", "frac_reward_zero_std",
    }  # fmt: skip
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


def _teach_one_answer(model_dir: Path, rows, answer: str, steps: int = 60) -> None:
    """Overfit a saved full model to answer ``answer`` after any prompt: a policy that names one item."""
    from training.models import load_for_training
    from training.prompts import PromptSettings, build_messages

    model, tokenizer = load_for_training(model_dir)
    texts = [
        tokenizer.apply_chat_template(
            [*build_messages(row, PromptSettings(history_k=2, num_candidates=20), True), {"role": "assistant", "content": answer}],
            tokenize=False,
        )
        for row in rows
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        model(**batch, labels=labels).loss.backward()
        optimiser.step()
    model.save_pretrained(model_dir)


@pytest.mark.slow
def test_grpo_survives_a_policy_that_names_a_wrong_item_beside_untitled_items(tmp_path, isolated_caches):
    """The crash of issue 10: a policy naming an item while candidates and targets lack titles."""
    from training.data import load_split
    from training.grpo import GRPOSettings, run_grpo

    release = untitled_release(tmp_path / "release")
    sft = SFTSettings(
        model="tiny", full=True, history_k=2, num_candidates=20, max_steps=1, eval_steps=1, eval_holdout=4, tiny_vocab_size=400
    )
    run_sft(str(release), "grocery", None, tmp_path / "sft", sft)
    rows = load_split(str(release), "grocery", None, "train").select(range(8))
    _teach_one_answer(tmp_path / "sft", rows, f"<think>same as before</think><item>{WRONG_ITEM}</item>")

    settings = GRPOSettings(
        max_steps=2, batch_size=4, num_generations=4, max_completion_length=24, temperature=0.3, logging_steps=1, full=True
    )
    result = run_grpo(tmp_path / "sft", str(release), "grocery", None, tmp_path / "grpo", settings)
    assert result.global_step == 2
    assert result.skipped_without_title > 0  # the untitled targets were left out and counted
    # The policy named a real item (valid) that is mostly not the target: rewards differ across items.
    assert result.rewards["validity_reward"] > 0.5 and result.rewards["hit_reward"] < 0.5
    assert "reward_group_std" in result.rewards
    record = json.loads((tmp_path / "grpo" / "training_config.json").read_text())
    assert record["rows"]["skipped_without_title"] == result.skipped_without_title
