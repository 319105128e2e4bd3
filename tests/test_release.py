"""Releases: layout, validation gate, immutable versions, changelog, checksummed pull and loading."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from release_runs import make_run, rrec_commands, write_validation
from typer.testing import CliRunner

from core.schemas import ITEMS, RELEASE_ROW
from core.tables import read_table
from release.changelog import schema_changes
from release.checksums import ChecksumError, sha256_file, verify_release
from release.layout import ReleaseError, config_name, join_release_rows
from release.loading import load_release
from release.publish import ReleaseSettings, release_runs
from release.pull import pull_release
from release.registry import Registry

runner = CliRunner()
# Only the commands under test: another part's unfinished command must not break these tests.
app = rrec_commands()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    return [make_run(root, "Grocery_and_Gourmet_Food"), make_run(root, "Office_Products")]


@pytest.fixture(scope="module")
def released(runs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry holding v1.0.0 of both domains (shards of 10 rows, so splits span several files)."""
    registry = tmp_path_factory.mktemp("registry") / "registry"
    release_runs(runs, registry, ReleaseSettings(version="1.0.0", shard_rows=10))
    return registry


def git(registry: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(registry), *args], capture_output=True, text=True, check=True).stdout


def test_config_names_are_short_for_known_domains_and_slugs_otherwise() -> None:
    assert config_name("Grocery_and_Gourmet_Food") == "grocery"
    assert config_name("Office_Products") == "office"
    assert config_name("All_Beauty") == "all_beauty"
    assert config_name("Clothing, Shoes & Jewelry") == "clothing_shoes_jewelry"
    with pytest.raises(ValueError, match="no letters or digits"):
        config_name("---")


def test_release_rows_keep_filtered_train_rows_and_every_evaluation_row(runs: list[Path]) -> None:
    sequences = read_table(runs[0] / "sequences", "sequences")
    filtered = read_table(runs[0] / "filtered", "filtered")
    splits, dropped = join_release_rows(sequences, filtered)
    passed = set(zip(filtered["user_id"].to_pylist(), filtered["target_parent_asin"].to_pylist()))
    train_keys = set(zip(splits["train"]["user_id"].to_pylist(), pc.struct_field(splits["train"]["target"], "parent_asin").to_pylist()))
    assert train_keys == passed
    assert dropped == sum(1 for s in sequences["split"].to_pylist() if s == "train") - len(passed)
    for split in ("validation", "test"):
        assert splits[split].num_rows == sum(1 for s in sequences["split"].to_pylist() if s == split)
        assert splits[split]["rationale"].null_count == splits[split].num_rows
    assert all(t.schema == RELEASE_ROW for t in splits.values())
    # The rationale travels with its own sequence, not with another row of the same user.
    by_user = {row["user_id"]: row for row in filtered.to_pylist()}
    for row in splits["train"].to_pylist():
        assert row["rationale"] == by_user[row["user_id"]]["rationale"]


def test_rationales_of_sequences_that_no_longer_exist_are_an_error_not_a_silent_drop(runs: list[Path]) -> None:
    sequences = read_table(runs[0] / "sequences", "sequences")
    filtered = read_table(runs[0] / "filtered", "filtered")
    with pytest.raises(ReleaseError, match="1 rationale"):
        join_release_rows(sequences.filter(pc.not_equal(sequences["user_id"], filtered["user_id"][0])), filtered)


def test_release_rows_do_not_depend_on_the_order_of_the_input_partitions(runs: list[Path]) -> None:
    sequences = read_table(runs[0] / "sequences", "sequences")
    filtered = read_table(runs[0] / "filtered", "filtered")
    reversed_order = pa.array(range(sequences.num_rows - 1, -1, -1))
    first, _ = join_release_rows(sequences, filtered)
    second, _ = join_release_rows(sequences.take(reversed_order), filtered.take(pa.array(range(filtered.num_rows - 1, -1, -1))))
    assert all(first[split].equals(second[split]) for split in first)


def test_release_has_the_design_layout_and_a_manifest_with_every_checksum(released: Path, runs: list[Path]) -> None:
    assert git(released, "tag", "--list").split() == ["v1.0.0"]
    assert git(released, "rev-list", "--count", "HEAD").strip() == "1"
    manifest = json.loads((released / "manifest.json").read_text())
    assert manifest["version"] == "1.0.0" and manifest["tag"] == "v1.0.0"
    assert manifest["code_version"].startswith("0.")
    assert manifest["sources"]["grocery"] == {
        "domain": "Grocery_and_Gourmet_Food",
        "hash": "xxh3-128",
        "files": {"Grocery_and_Gourmet_Food.jsonl.gz": "abc123"},
    }
    assert manifest["config"]["stages"]["grocery"]["sequences"]["num_negatives"] == 4
    assert manifest["config"]["release"]["shard_rows"] == 10
    # 24 users: train keeps the 18 whose rationale passed, evaluation splits keep all 24.
    assert manifest["row_counts"]["grocery"] == {"train": 18, "validation": 24, "test": 24}
    assert manifest["row_counts"]["grocery_items"]["items"] > 0
    assert sorted(p.name for p in (released / "data" / "grocery").iterdir()) == [
        "test-00000-of-00003.parquet",
        "test-00001-of-00003.parquet",
        "test-00002-of-00003.parquet",
        "train-00000-of-00002.parquet",
        "train-00001-of-00002.parquet",
        "validation-00000-of-00003.parquet",
        "validation-00001-of-00003.parquet",
        "validation-00002-of-00003.parquet",
    ]
    files = {p.relative_to(released).as_posix() for p in released.rglob("*") if p.is_file() and ".git" not in p.parts}
    assert files - {"manifest.json"} == set(manifest["files"])
    assert {"README.md", "CHANGELOG.md", "validation/summary.json"} <= files
    assert any(name.startswith("data/office_items/items-") for name in files)
    for name, info in manifest["files"].items():
        assert sha256_file(released / name) == info["sha256"], name
    summary = json.loads((released / "validation" / "summary.json").read_text())
    assert summary["critical_failures"] == 0 and set(summary["configs"]) == {"grocery", "office"}
    assert "/" not in json.dumps({c: v["run"] for c, v in summary["configs"].items()})  # no local folders published
    # The item catalog holds every item a released row mentions, and nothing else.
    items = pq.read_table(released / "data" / "grocery_items").to_pylist()
    mentioned = set()
    for path in (released / "data" / "grocery").glob("*.parquet"):
        for row in pq.read_table(path).to_pylist():
            mentioned |= {h["parent_asin"] for h in row["history"]} | {c["parent_asin"] for c in row["candidates"]}
    assert {i["parent_asin"] for i in items} == mentioned


@pytest.mark.parametrize("defect", ["critical_failure", "missing_validation"])
def test_release_is_refused_when_validation_failed_or_is_missing(defect: str, runs: list[Path], tmp_path: Path) -> None:
    bad = make_run(tmp_path / "runs", "Office_Products", with_validation=defect != "missing_validation", critical_failures=2)
    registry = tmp_path / "registry"
    result = runner.invoke(app, ["release", "--runs", str(runs[0]), str(bad), "--registry", str(registry), "--version", "1.0.0"])
    assert result.exit_code == 2
    expected = "failed 2 critical expectation" if defect == "critical_failure" else "rrec validate --run"
    assert expected in result.output and "Traceback" not in result.output
    assert Registry(registry).versions() == []


def test_an_existing_version_is_immutable_but_an_unchanged_rerun_is_reported(runs: list[Path], tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    first = runner.invoke(app, ["release", "--runs", str(runs[0]), "--registry", str(registry), "--version", "1.0.0"])
    assert first.exit_code == 0, first.output
    assert "Released v1.0.0" in first.output
    head = git(registry, "rev-parse", "HEAD")

    again = runner.invoke(app, ["release", "--runs", str(runs[0]), "--registry", str(registry), "--version", "1.0.0"])
    assert again.exit_code == 0, again.output
    assert "already released" in again.output

    changed = make_run(tmp_path / "changed", "Grocery_and_Gourmet_Food", extra_users=4)
    refused = runner.invoke(app, ["release", "--runs", str(changed), "--registry", str(registry), "--version", "v1.0.0"])
    assert refused.exit_code == 2
    assert "immutable" in refused.output and "Traceback" not in refused.output
    assert git(registry, "rev-parse", "HEAD") == head
    assert Registry(registry).versions() == ["v1.0.0"]


def test_changelog_reports_rows_added_per_split_and_the_filter_rate_change(runs: list[Path], tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    release_runs([runs[0]], registry, ReleaseSettings(version="1.0.0"))
    grown = make_run(tmp_path / "grown", "Grocery_and_Gourmet_Food", extra_users=5)
    result = release_runs([grown], registry, ReleaseSettings(version="1.1.0"))
    assert result.manifest["previous_version"] == "v1.0.0"
    changelog = (registry / "CHANGELOG.md").read_text()
    assert changelog.index("## v1.1.0") < changelog.index("## v1.0.0")  # the older section is kept below
    # Users 24-28 are new; user 27 is a fourth user whose rationale was filtered out (no train row).
    assert "| grocery | train | 18 | 22 | 4 | 0 |" in changelog
    assert "| grocery | validation | 24 | 29 | 5 | 0 |" in changelog
    assert "| grocery | test | 24 | 29 | 5 | 0 |" in changelog
    assert "No schema changes." in changelog
    # 6 of 24 annotated rationales were rejected before, 7 of 29 now.
    assert "| grocery | 25.00% | 24.14% | -0.86 points |" in changelog
    assert Registry(registry).versions() == ["v1.0.0", "v1.1.0"]
    assert git(registry, "rev-list", "--count", "HEAD").strip() == "2"


def test_schema_changes_name_added_removed_and_retyped_columns() -> None:
    changes = schema_changes({"a": "string", "b": "int32", "c": "string"}, {"a": "string", "b": "int64", "d": "bool"})
    assert changes == ["added column `d` (bool)", "removed column `c` (string)", "column `b` changed type: int32 -> int64"]


def test_pull_from_a_registry_verifies_and_loads_with_datasets(released: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["pull", str(released), "--revision", "v1.0.0", "--out", str(tmp_path / "pulled")])
    assert result.exit_code == 0, result.output
    assert "files verified" in result.output
    manifest = verify_release(tmp_path / "pulled")
    ds = datasets.load_dataset(str(tmp_path / "pulled"), "grocery", cache_dir=str(tmp_path / "hf"))
    assert {split: len(ds[split]) for split in ds} == manifest["row_counts"]["grocery"]
    # Pulling again into the same folder is a no-op, not an error.
    assert pull_release(str(released), "1.0.0", tmp_path / "pulled") == tmp_path / "pulled"


def _tamper(registry: Path, tmp_path: Path, change: str) -> Path:
    """A copy of the registry whose tag v1.0.0 was moved to a commit with one data file altered or removed."""
    copy = tmp_path / "tampered-registry"
    shutil.copytree(registry, copy)
    shard = copy / "data" / "grocery" / "train-00000-of-00002.parquet"
    if change == "modified":
        table = pq.read_table(shard)
        rationale = table["rationale"].to_pylist()
        rationale[0] = "A different explanation."
        pq.write_table(table.set_column(table.schema.get_field_index("rationale"), "rationale", pa.array(rationale)), shard)
    else:
        shard.unlink()
    git(copy, "-c", "user.name=x", "-c", "user.email=x@x", "commit", "-qam", "edit")
    git(copy, "-c", "user.name=x", "-c", "user.email=x@x", "tag", "-f", "-a", "v1.0.0", "-m", "moved")
    return copy


@pytest.mark.parametrize("change", ["modified", "missing"])
def test_pull_refuses_a_tampered_or_missing_file_and_writes_nothing(change: str, released: Path, tmp_path: Path) -> None:
    tampered = _tamper(released, tmp_path, change)
    out = tmp_path / "out"
    result = runner.invoke(app, ["pull", str(tampered), "--revision", "v1.0.0", "--out", str(out)])
    assert result.exit_code == 2
    expected = "checksum mismatch" if change == "modified" else "missing"
    assert expected in result.output and "train-00000-of-00002.parquet" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()
    assert not list(tmp_path.glob(".tmp-pull-*"))


def test_verify_refuses_a_file_that_the_manifest_does_not_list(released: Path, tmp_path: Path) -> None:
    out = pull_release(str(released), "v1.0.0", tmp_path / "pulled")
    (out / "data" / "grocery" / "train-00009-of-00009.parquet").write_bytes(b"PAR1")
    with pytest.raises(ChecksumError, match="not in the manifest"):
        verify_release(out)


def test_unknown_version_and_unknown_source_are_clear_errors(released: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["pull", str(released), "--version", "v9.9.9", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "available: v1.0.0" in result.output
    result = runner.invoke(app, ["pull", str(tmp_path), "--revision", "v1.0.0", "--out", str(tmp_path / "y")])
    assert result.exit_code == 2 and "not a release registry" in result.output


@pytest.mark.parametrize("config", ["grocery", "office", "grocery_items", "office_items"])
def test_load_release_reads_every_config_and_split_with_list_of_struct_features(config: str, released: Path, tmp_path: Path) -> None:
    manifest = json.loads((released / "manifest.json").read_text())
    ds = load_release(released, config, revision="v1.0.0", cache_dir=tmp_path / "cache")
    expected_features = datasets.Features.from_arrow_schema(ITEMS if config.endswith("_items") else RELEASE_ROW)
    assert {split: len(ds[split]) for split in ds} == manifest["row_counts"][config]
    for split in ds:
        assert ds[split].features == expected_features
    if not config.endswith("_items"):
        history = ds["train"].features["history"]
        assert isinstance(history, datasets.List) and set(history.feature) == {"parent_asin", "title", "rating", "timestamp"}
        row = ds["train"][0]
        assert row["candidates"][row["target_index"]]["parent_asin"] == row["target"]["parent_asin"]
        assert row["rationale"]


def test_load_release_rejects_an_unknown_config(released: Path, tmp_path: Path) -> None:
    with pytest.raises(ReleaseError, match="available: grocery, grocery_items, office, office_items"):
        load_release(released, "books", revision="v1.0.0", cache_dir=tmp_path / "cache")


def test_two_runs_of_the_same_domain_are_refused(runs: list[Path], tmp_path: Path) -> None:
    twin = make_run(tmp_path / "twin", "Grocery_and_Gourmet_Food")
    with pytest.raises(ReleaseError, match="both hold config 'grocery'"):
        release_runs([runs[0], twin], tmp_path / "registry", ReleaseSettings())


def test_a_release_too_large_for_the_memory_allowed_is_refused_before_reading_it(runs: list[Path], tmp_path: Path) -> None:
    from release.layout import release_memory_estimate

    needed = release_memory_estimate(runs[0])
    assert needed > 0
    with pytest.raises(ReleaseError, match=r"would hold about .* GiB of rows in memory.*--sample-users"):
        release_runs([runs[0]], tmp_path / "registry", ReleaseSettings(max_memory_gb=needed / 2 / 2**30))
    assert not (tmp_path / "registry").exists()  # refused before anything was written
    # With room for it, the same run is released.
    assert release_runs([runs[0]], tmp_path / "registry", ReleaseSettings(max_memory_gb=2 * needed / 2**30)).status == "released"


def test_a_run_validated_again_after_a_fix_can_be_released(tmp_path: Path) -> None:
    run = make_run(tmp_path / "runs", "Office_Products", critical_failures=1)
    with pytest.raises(ReleaseError, match="critical"):
        release_runs([run], tmp_path / "registry", ReleaseSettings())
    write_validation(run, 0)
    assert release_runs([run], tmp_path / "registry", ReleaseSettings()).status == "released"


HUB_CLIENT = """
import json, sys
from typer.testing import CliRunner
from release_runs import rrec_commands
result = CliRunner().invoke(rrec_commands(), json.loads(sys.argv[1]))
print("RESULT " + json.dumps({"exit_code": result.exit_code, "output": result.output}))
"""


def _rrec_against_hub(hub, home: Path, args: list[str]) -> dict:
    """Run an rrec command in a fresh process whose huggingface_hub talks to the loopback Hub."""
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    tests = Path(__file__).resolve().parent
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_HOME=str(home),
        HF_TOKEN=hub.token,
        NO_PROXY="127.0.0.1,localhost",
        PYTHONPATH=f"{tests}{os.pathsep}{tests.parent}",
    )
    done = subprocess.run([sys.executable, "-c", HUB_CLIENT, json.dumps(args)], env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


def test_release_push_then_pull_from_the_hub_verifies_checksums_and_refuses_a_tampered_file(runs: list[Path], tmp_path: Path) -> None:
    from hub_loopback import LoopbackHub

    registry = tmp_path / "registry"
    with LoopbackHub(token="hf_release_test_token") as hub:
        pushed = _rrec_against_hub(
            hub,
            tmp_path / "hf",
            [
                "release",
                "--runs",
                str(runs[0]),
                "--registry",
                str(registry),
                "--version",
                "1.0.0",
                "--push",
                "--repo-id",
                "rrec/demo",
            ],
        )
        assert pushed["exit_code"] == 0, pushed["output"]
        assert "Pushed v1.0.0 to the Hub dataset rrec/demo" in pushed["output"]
        assert 'load_dataset("rrec/demo", "grocery", revision="v1.0.0")' in pushed["output"]
        pulled = _rrec_against_hub(hub, tmp_path / "hf", ["pull", "rrec/demo", "--revision", "v1.0.0", "--out", str(tmp_path / "pulled")])
        assert pulled["exit_code"] == 0, pulled["output"]
        manifest = verify_release(tmp_path / "pulled")
        assert manifest == json.loads((registry / "manifest.json").read_text())

        hub.repo("dataset", "rrec/demo").resolve("v1.0.0").files["data/grocery/test-00000-of-00001.parquet"] += b"tampered"
        refused = _rrec_against_hub(hub, tmp_path / "hf2", ["pull", "rrec/demo", "--revision", "v1.0.0", "--out", str(tmp_path / "bad")])
        assert refused["exit_code"] == 2
        assert "checksum mismatch: data/grocery/test-00000-of-00001.parquet" in refused["output"]
        assert not (tmp_path / "bad").exists()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert not any(b"hf_release_test_token" in p.read_bytes() for p in written)
    assert "hf_release_test_token" not in pushed["output"] + pulled["output"] + refused["output"]


def test_releasing_into_a_git_repository_that_is_not_a_registry_is_refused(runs: list[Path], tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("keep me")
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    result = runner.invoke(app, ["release", "--runs", str(runs[0]), "--registry", str(project), "--version", "1.0.0"])
    assert result.exit_code == 2 and "did not create" in result.output
    assert (project / "notes.txt").read_text() == "keep me"


def test_changelog_section_lists_new_configs_and_schema_changes() -> None:
    from release.changelog import ReleaseDiff, SplitDiff, render_section

    diff = ReleaseDiff(
        splits=[SplitDiff("grocery", "train", 10, 12, 3, 1)],
        configs_added=["office"],
        schema_changes={"grocery": ["added column `score` (float)"]},
        filter_rates={"grocery": (0.25, 0.2), "office": (None, 0.1)},
    )
    text = render_section("v2.0.0", "2026-01-01", {"row_counts": {}}, "v1.0.0", diff)
    assert "- New configs: office" in text
    assert "| grocery | train | 10 | 12 | 3 | 1 |" in text
    assert "- grocery: added column `score` (float)" in text
    assert "| grocery | 25.00% | 20.00% | -5.00 points |" in text
    assert "| office | n/a | 10.00% | n/a |" in text


def test_data_files_stored_ahead_of_the_commit_give_the_tree_git_add_gives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A release stores its data files as blobs while it writes the card (Registry.store_blobs);
    # the published tree must be the one `git add --all` makes of the same folder.
    files = {f"data/grocery/train-{i:05d}-of-00003.parquet": bytes(range(256)) * (i + 1) * 1000 for i in range(3)}
    files |= {"README.md": b"# card\n", "figures/a.png": b"\x89PNG", "data/grocery_items/items-00000-of-00001.parquet": b"items"}

    def write(folder: Path) -> None:
        for name, content in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(content)

    registry = Registry(tmp_path / "registry")
    data = sorted(name for name in files if name.startswith("data/"))
    monkeypatch.chdir(tmp_path)  # a release folder named relative to this process's folder, as `--registry first/registry` gives
    with registry.publishing() as staging:
        release_dir = (staging / "v1.0.0").relative_to(tmp_path)
        write(release_dir)
        stored = registry.store_blobs(release_dir, data, processes=3)
        commit = registry.publish(release_dir, "1.0.0", "Release v1.0.0", stored=stored)

    plain = tmp_path / "plain"
    plain.mkdir()
    write(plain)
    subprocess.run(["git", "init", "-q", str(plain)], check=True)
    subprocess.run(["git", "-C", str(plain), "add", "--all"], check=True)
    expected = subprocess.run(["git", "-C", str(plain), "write-tree"], capture_output=True, text=True, check=True).stdout.strip()
    published = subprocess.run(
        ["git", "-C", str(registry.path), "rev-parse", f"{commit}^{{tree}}"], capture_output=True, text=True, check=True
    )
    assert published.stdout.strip() == expected
    for name in data:
        blob = subprocess.run(["git", "hash-object", str(plain / name)], capture_output=True, text=True, check=True).stdout.strip()
        assert stored[name] == blob
    assert (registry.path / "data/grocery/train-00002-of-00003.parquet").read_bytes() == files["data/grocery/train-00002-of-00003.parquet"]
