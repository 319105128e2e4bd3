"""The dataset card: Hub-readable YAML metadata, every datasheet section, real statistics and figures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from huggingface_hub import DatasetCard
from release_runs import make_run, rrec_commands
from typer.testing import CliRunner

from core.reasons import describe
from datacards.card import CardSettings, build_card, size_category
from datacards.statistics import category_of, domain_statistics
from release.layout import load_domains, write_data

runner = CliRunner()
# Only the commands under test: another part's unfinished command must not break these tests.
app = rrec_commands()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DATASHEET_SECTIONS = [
    "## Dataset Summary",
    "## Uses",
    "### Direct Use",
    "### Out-of-Scope Use",
    "## How to load",
    "## Dataset Structure",
    "### Data Fields",
    "### Data Instances",
    "### Data Splits",
    "### Statistics",
    "### Curation Rationale",
    "### Source Data",
    "### Annotations",
    "#### Annotation process",
    "#### Who are the annotators?",
    "### Validation",
    "## Personal and Sensitive Information",
    "### Discussion of Biases",
    "### Other Known Limitations",
    "## How to rebuild this version",
    "### Dataset Sources",
    "### Licensing Information",
    "### Citation Information",
    "### Dataset Card Contact",
]


def real_source(domain: str) -> dict:
    """The ingest entry's ``source`` for real files of ``domain`` downloaded from the Hub."""
    return {
        "kind": "real",
        "synthetic": None,
        "files": [
            {"name": f"{domain}.jsonl.gz", "role": "reviews", "bytes": 1_000, "xxh3": "ab" * 16, "hub_repo": None, "hub_revision": None},
            {"name": f"meta_{domain}.jsonl.gz", "role": "meta", "bytes": 500, "xxh3": "cd" * 16, "hub_repo": None, "hub_revision": None},
        ],
    }


@pytest.fixture(scope="module")
def carded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("card")
    runs = [
        make_run(root / "runs", "Grocery_and_Gourmet_Food", source=real_source("Grocery_and_Gourmet_Food")),
        make_run(root / "runs", "Office_Products", with_judge=False, source=real_source("Office_Products")),
    ]
    domains = load_domains(runs)
    out = root / "release"
    write_data(domains, out, shard_rows=100)
    build_card(domains, out, "1.2.0", CardSettings(), repo_id="rationale-rec/amazon-2023")
    return out, domains


def test_card_metadata_is_readable_by_huggingface_hub(carded: tuple[Path, list]) -> None:
    out, domains = carded
    data = DatasetCard.load(out / "README.md").data.to_dict()
    assert data["pretty_name"] == CardSettings().pretty_name
    assert data["license"] == "other" and data["license_name"] and data["license_link"]
    assert data["language"] == ["en"]
    assert data["task_categories"] == ["text-generation"]
    assert data["size_categories"] == ["n<1K"]
    configs = {c["config_name"]: c for c in data["configs"]}
    assert set(configs) == {"grocery", "grocery_items", "office", "office_items"}
    assert configs["grocery"]["data_files"] == [
        {"split": "train", "path": "data/grocery/train-*.parquet"},
        {"split": "validation", "path": "data/grocery/validation-*.parquet"},
        {"split": "test", "path": "data/grocery/test-*.parquet"},
    ]
    assert configs["office_items"]["data_files"] == [{"split": "items", "path": "data/office_items/items-*.parquet"}]
    infos = {info["config_name"]: info for info in data["dataset_info"]}
    grocery = next(d for d in domains if d.config == "grocery")
    assert {s["name"]: s["num_examples"] for s in infos["grocery"]["splits"]} == grocery.row_counts()
    assert all(s["num_bytes"] > 0 for s in infos["grocery"]["splits"])
    assert infos["grocery"]["download_size"] == sum(p.stat().st_size for p in (out / "data" / "grocery").glob("*.parquet"))
    features = {f["name"]: f for f in infos["grocery"]["features"]}
    assert set(features["history"]["list"][i]["name"] for i in range(4)) == {"parent_asin", "title", "rating", "timestamp"}
    assert {f["name"] for f in infos["grocery_items"]["features"]} >= {"parent_asin", "title", "categories"}


def test_card_has_every_datasheet_section_in_order(carded: tuple[Path, list]) -> None:
    text = (carded[0] / "README.md").read_text()
    positions = [text.find(section + "\n") for section in DATASHEET_SECTIONS]
    assert -1 not in positions, [s for s, p in zip(DATASHEET_SECTIONS, positions) if p == -1]
    assert positions == sorted(positions)


def test_card_shows_a_real_example_record_and_a_versioned_load_snippet(carded: tuple[Path, list]) -> None:
    out, domains = carded
    text = (out / "README.md").read_text()
    block = text.split("### Data Instances", 1)[1].split("```json\n", 1)[1].split("\n```", 1)[0]
    record = json.loads(block)
    first_train = domains[0].splits["train"].slice(0, 1).to_pylist()[0]
    assert record["user_id"] == first_train["user_id"]
    assert record["rationale"] == first_train["rationale"]
    assert record["target"] == first_train["target"]
    assert 'load_dataset("rationale-rec/amazon-2023", "grocery", revision="v1.2.0")' in text


def test_card_reports_annotation_filter_reasons_and_judge_scores(carded: tuple[Path, list]) -> None:
    out, domains = carded
    text = (out / "README.md").read_text()
    stats = domain_statistics(domains[0])
    for reason, count in stats.filter_reasons.items():
        # each reason with its meaning from the registry (core/reasons.py)
        assert f"| `{reason}` | {describe(reason)} | {count:,} |" in text
    assert "annotator `template`" in text and "prompt version\n`teacher-v1`" in text
    assert "USD 0.0000" in text
    # grocery was judged (scores 0-3 with counts 1, 2, 3, 4); office was not.
    judged = text.split("**`grocery`**", 1)[1].split("**`office`**", 1)[0]
    assert "mean score 2.00" in judged
    assert all(f"| {score} | {n} |" in judged for score, n in ((0, 1), (1, 2), (2, 3), (3, 4)))
    assert "No judge pass was run" in text.split("**`office`**", 1)[1]
    assert "kcore: 30" in text and "invalid_json: 20" in text
    assert "| users before k-core | 31 |" in text and "| users after k-core | 24 |" in text


def test_card_cites_the_paper_and_amazon_reviews_2023_in_bibtex(carded: tuple[Path, list]) -> None:
    citation = (carded[0] / "README.md").read_text().split("### Citation Information", 1)[1]
    entries = re.findall(r"@\w+\{[^@]+", citation)
    assert len(entries) == 2
    assert "2601.02364" in entries[0] and "Towards Trustworthy {LLM}-Based Recommendation via Rationale Integration" in entries[0]
    assert "Bridging Language and Items for Retrieval and Recommendation" in entries[1] and "Hou, Yupeng" in entries[1]


def test_card_figures_are_pngs_in_the_release_and_shown_in_the_card(carded: tuple[Path, list]) -> None:
    out, _ = carded
    text = (out / "README.md").read_text()
    shown = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", text)
    expected = {
        f"figures/{config}_{kind}.png"
        for config in ("grocery", "office")
        for kind in ("history_length", "items_per_category", "rationale_length", "filter_reasons")
    }
    assert set(shown) == expected
    for name in expected:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_statistics_come_from_the_released_rows(carded: tuple[Path, list]) -> None:
    _, domains = carded
    stats = domain_statistics(domains[0])
    test_rows = domains[0].splits["test"].to_pylist()
    assert stats.history_length.n == len(test_rows)
    assert stats.history_length.maximum == max(len(r["history"]) for r in test_rows)
    assert stats.rationale_words.n == domains[0].splits["train"].num_rows
    assert sum(n for _, n in stats.items_per_category) == domains[0].items.num_rows
    assert stats.filter_rate == pytest.approx(6 / 24)


def test_category_and_size_buckets() -> None:
    assert category_of(["Grocery & Gourmet Food", "Snacks", "Chips"], "Grocery") == "Snacks"
    assert category_of(["Office Products"], None) == "Office Products"
    assert category_of([], "Grocery") == "Grocery"
    assert category_of(None, None) == "(uncategorised)"
    assert [size_category(n) for n in (0, 999, 1000, 54_321, 2_000_000)] == ["n<1K", "n<1K", "1K<n<10K", "10K<n<100K", "1M<n<10M"]


def test_rrec_card_writes_the_card_of_run_folders(carded: tuple[Path, list], tmp_path: Path) -> None:
    runs = make_run(tmp_path / "runs", "Office_Products", source=real_source("Office_Products"))
    result = runner.invoke(
        app, ["card", "--runs", str(runs), "--out", str(tmp_path / "card"), "--version", "2.0.0", "--pretty-name", "Office rationales"]
    )
    assert result.exit_code == 0, result.output
    card = DatasetCard.load(tmp_path / "card" / "README.md")
    assert card.data.pretty_name == "Office rationales"
    assert "Version **v2.0.0**" in card.text
    assert (tmp_path / "card" / "figures" / "office_history_length.png").exists()
    missing = runner.invoke(app, ["card", "--runs", str(tmp_path / "nope"), "--out", str(tmp_path / "c2")])
    assert missing.exit_code == 2 and "do not exist" in missing.output


def test_figures_drawn_ahead_in_threads_are_the_cards_own(carded: tuple[Path, list], tmp_path: Path) -> None:
    """The publisher draws a config's figures while the shards are written (another thread may
    draw at the same time): the card uses them, and they are the bytes the card would draw."""
    from concurrent.futures import ThreadPoolExecutor

    from datacards.card import DrawnFigures, draw_figures

    out, domains = carded
    with ThreadPoolExecutor(max_workers=2) as pool:  # both configs at once: no shared pyplot state
        statistics = [domain_statistics(d) for d in domains]
        drawn = dict(zip([d.config for d in domains], pool.map(draw_figures, statistics, [tmp_path / "ahead"] * len(domains))))
    for domain in domains:
        for kind, name in drawn[domain.config].figures.items():
            assert (tmp_path / "ahead" / name).read_bytes() == (out / name).read_bytes(), kind
    # The card uses what was drawn (a figure removed from the folder stays removed) ...
    build_card(domains, tmp_path / "ahead", "1.2.0", CardSettings(), drawn=drawn)
    first = domains[0].config
    gone = tmp_path / "ahead" / drawn[first].figures["history_length"]
    gone.unlink()
    build_card(domains, tmp_path / "ahead", "1.2.0", CardSettings(), drawn=drawn)
    assert not gone.exists()
    # ... unless its statistics are not the card's: then it draws them again.
    other = domain_statistics(domains[1])
    build_card(domains, tmp_path / "ahead", "1.2.0", CardSettings(), drawn={first: DrawnFigures(other, drawn[first].figures)})
    assert gone.read_bytes() == (out / drawn[first].figures["history_length"]).read_bytes()


def test_the_card_preview_gives_the_sizes_a_release_of_the_same_runs_records(tmp_path: Path) -> None:
    """`rrec card` (tables in memory) and `rrec release` (sizes summed as the shards are
    written) state the same Arrow sizes; before, the preview stated the in-memory tables' nbytes."""
    import yaml

    from release.publish import ReleaseSettings, release_runs

    runs = [make_run(tmp_path / "runs", "Grocery_and_Gourmet_Food"), make_run(tmp_path / "runs", "Office_Products", with_judge=False)]
    config = tmp_path / "release.yaml"
    config.write_text(yaml.safe_dump({"release": {"shard_rows": 7}}))  # several shards per split
    command = ["card", "--out", str(tmp_path / "preview"), "--config", str(config)]
    result = runner.invoke(app, [*command[:1], *(a for run in runs for a in ("--runs", str(run))), *command[1:]])
    assert result.exit_code == 0, result.output
    release_runs(runs, tmp_path / "registry", ReleaseSettings(version="1.0.0", shard_rows=7))

    def sizes(readme: Path) -> dict:
        infos = DatasetCard.load(readme).data.to_dict()["dataset_info"]
        return {i["config_name"]: (i["dataset_size"], {s["name"]: s["num_bytes"] for s in i["splits"]}) for i in infos}

    released = sizes(tmp_path / "registry" / "README.md")
    assert sizes(tmp_path / "preview" / "README.md") == released
    assert all(size > 0 for size, _ in released.values()) and len(released) == 4
