"""Training data: loading released versions and turning rows into student chat examples."""

from __future__ import annotations

import shutil

import pytest
from release_fixture import make_release

from core.rationale_format import parse
from training.data import load_catalog, load_split, load_split_with_source, to_chat_examples
from training.models import TinyModelSettings, train_tiny_tokenizer
from training.prompts import PromptSettings, build_completion, build_messages, select_candidates


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RREC_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield make_release(tmp_path_factory.mktemp("registry"), n_users=12)


@pytest.fixture(scope="module")
def train_rows(registry):
    return load_split(str(registry), "grocery", "v1.0.0", "train")


def test_load_split_pins_the_registry_tag_and_reads_release_rows(registry):
    rows, source = load_split_with_source(str(registry), "grocery", None, "test")
    assert len(rows) == 12
    assert source.kind == "registry" and source.revision == "v1.0.0" and len(source.commit) == 40
    row = rows[0]
    assert row["candidates"][row["target_index"]]["parent_asin"] == row["target"]["parent_asin"]
    assert row["rationale"] is None  # test rows are released without rationales


def test_unknown_version_is_a_clear_error(registry):
    with pytest.raises(ValueError, match=r"v9\.9\.9 is not in registry .*available: v1\.0\.0"):
        load_split(str(registry), "grocery", "v9.9.9", "train")


def test_catalog_and_pulled_folder_load(registry, tmp_path):
    assert len(load_catalog(str(registry), "grocery", "v1.0.0")) == 64
    folder = tmp_path / "pulled"
    shutil.copytree(registry, folder, ignore=shutil.ignore_patterns(".git"))
    rows, source = load_split_with_source(str(folder), "grocery", "v1.0.0", "validation")
    assert source.kind == "folder" and source.revision == "v1.0.0" and len(rows) == 12


def test_history_is_the_last_k_items_oldest_first_with_ratings(train_rows):
    row = next(r for r in train_rows if len(r["history"]) >= 4)
    user_turn = build_messages(row, PromptSettings(history_k=3, num_candidates=0), infer_rationale=True)[1]["content"]
    shown = [line for line in user_turn.splitlines() if line[:2] in {"1.", "2.", "3.", "4."}]
    expected = row["history"][-3:]
    assert len(shown) == 3
    for line, event in zip(shown, expected):
        assert event["title"] in line and f"rated {event['rating']:g}/5" in line
    assert row["history"][-4]["title"] not in user_turn


def test_candidates_are_m_of_the_row_including_the_target_and_seeded(train_rows):
    settings = PromptSettings(history_k=3, num_candidates=5, seed=7)
    for row in train_rows:
        shown = select_candidates(row, settings)
        assert len(shown) == 5 and row["target"]["title"] in [c["title"] for c in shown]
        assert all(c in row["candidates"] for c in shown)
        assert shown == select_candidates(dict(row), settings)  # same (seed, user) -> same draw
    row = train_rows[0]
    draws = {tuple(c["title"] for c in select_candidates(row, PromptSettings(num_candidates=5, seed=s))) for s in range(5)}
    assert len(draws) > 1  # the seed matters
    user_turn = build_messages(row, settings, infer_rationale=True)[1]["content"]
    assert sum(line.startswith("- ") for line in user_turn.splitlines()) == 5


def test_no_candidate_list_and_all_candidates(train_rows):
    row = train_rows[0]
    none = build_messages(row, PromptSettings(num_candidates=0), infer_rationale=True)
    assert "Candidates" not in none[1]["content"] and "candidate list" not in none[0]["content"]
    everything = select_candidates(row, PromptSettings(num_candidates=500))
    assert everything == list(row["candidates"])


def test_rationale_and_item_only_forms(train_rows):
    row = train_rows[0]
    with_rationale = parse(build_completion(row, with_rationale=True))
    assert with_rationale.well_formed and with_rationale.item == row["target"]["title"]
    assert with_rationale.rationale == row["rationale"].strip()
    item_only = build_completion(row, with_rationale=False)
    assert item_only == f"<item>{row['target']['title']}</item>"
    assert parse(item_only, require_think=False).well_formed
    system_rationale = build_messages(row, PromptSettings(), infer_rationale=True)[0]["content"]
    system_item = build_messages(row, PromptSettings(), infer_rationale=False)[0]["content"]
    assert "<think>" in system_rationale and "<think>" not in system_item and "<item>" in system_item


def test_rows_without_rationale_are_counted_not_silently_dropped(registry):
    validation = load_split(str(registry), "grocery", "v1.0.0", "validation")
    examples = to_chat_examples(validation, PromptSettings(num_candidates=3), with_rationale=True)
    assert len(examples.dataset) == 0 and examples.skipped_without_rationale == len(validation)
    item_only = to_chat_examples(validation, PromptSettings(num_candidates=3), with_rationale=False)
    assert len(item_only.dataset) == len(validation) and item_only.skipped_without_rationale == 0
    example = item_only.dataset[0]
    assert [m["role"] for m in example["prompt"]] == ["system", "user"]
    assert example["completion"] == [{"role": "assistant", "content": f"<item>{validation[0]['target']['title']}</item>"}]
    with pytest.raises(ValueError, match="has no rationale"):
        build_completion(validation[0], with_rationale=True)


def test_tiny_tokenizer_keeps_the_tags_whole_and_renders_a_gemma_chat(train_rows):
    texts = [r["rationale"] for r in train_rows] + [r["target"]["title"] for r in train_rows]
    tokenizer = train_tiny_tokenizer(texts, TinyModelSettings(vocab_size=400))
    for tag in ("<think>", "</think>", "<item>", "</item>"):
        assert len(tokenizer(tag, add_special_tokens=False)["input_ids"]) == 1
    completion = build_completion(train_rows[0], with_rationale=True)
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == completion
    messages = build_messages(train_rows[0], PromptSettings(num_candidates=3), infer_rationale=True)
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered.startswith("<bos><start_of_turn>user\nYou are a recommender")
    assert rendered.endswith("<end_of_turn>\n<start_of_turn>model\n")


def test_the_trained_part_of_an_example_is_exactly_the_assistant_turn(train_rows):
    """TRL masks the prompt by tokenising it alone: it must be a prefix of prompt + completion."""
    settings = PromptSettings(history_k=3, num_candidates=3)
    examples = to_chat_examples(train_rows, settings, with_rationale=True).dataset
    tokenizer = train_tiny_tokenizer([r["rationale"] for r in train_rows], TinyModelSettings(vocab_size=400))
    example = examples[0]
    prompt_ids = tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True)["input_ids"]
    full_ids = tokenizer.apply_chat_template(example["prompt"] + example["completion"])["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    trained = tokenizer.decode(full_ids[len(prompt_ids) :])
    assert trained == example["completion"][0]["content"] + "<end_of_turn>\n"  # the model also learns to stop


def test_bad_sources_are_one_line_cli_errors(registry, tmp_path):
    import typer
    from typer.testing import CliRunner

    from training.cli import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    base = ["train", "sft", "--subset", "grocery", "--output", str(tmp_path / "out"), "--model", "tiny"]
    not_a_source = runner.invoke(app, [*base, "--dataset", str(tmp_path / "nowhere")])
    assert not_a_source.exit_code == 2 and "neither an existing registry or release folder nor a Hub dataset id" in not_a_source.output
    wrong_config = runner.invoke(app, [*base[:2], *base[4:], "--dataset", str(registry), "--subset", "office"])
    assert wrong_config.exit_code == 2 and "has no config 'office'" in wrong_config.output
    assert "Traceback" not in not_a_source.output + wrong_config.output


def test_rows_whose_target_has_no_title_are_counted_and_untitled_items_show_their_id(registry):
    """Items without metadata have a null title: such targets are skipped and counted, not a crash."""
    train = load_split(str(registry), "grocery", "v1.0.0", "train")

    def drop_first_title(row, index):
        if index == 0:
            row["target"] = {**row["target"], "title": None}
        if index == 1 and row["history"]:
            row["history"] = [{**row["history"][0], "title": None}, *row["history"][1:]]
        return row

    rows = train.map(drop_first_title, with_indices=True)
    examples = to_chat_examples(rows, PromptSettings(num_candidates=0), with_rationale=True)
    assert examples.skipped_without_title == 1
    assert len(examples.dataset) == len(train) - 1 - examples.skipped_without_rationale
    with pytest.raises(ValueError, match="without a title"):
        build_completion(rows[0], with_rationale=False)
    user_turn = build_messages(rows[1], PromptSettings(num_candidates=0), infer_rationale=True)[1]["content"]
    assert f"untitled item {rows[1]['history'][0]['parent_asin']}" in user_turn and "None" not in user_turn
