"""`rrec run`: the real chain from sampled raw files to a tagged local release that `datasets` loads."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import datasets
import pytest
import yaml
from typer.testing import CliRunner

from core.schemas import ITEMS, RELEASE_ROW

pytestmark = pytest.mark.slow
runner = CliRunner()

SMALL_CHAIN = {
    "seed": 7,
    "sample": {"domains": ["Grocery_and_Gourmet_Food", "Office_Products"], "users": 200, "items": 80},
    "sequences": {"k": 5, "num_negatives": 20, "max_history": 20},
    "annotate": {"annotator": "template"},
    "judge": {"judge": "heuristic", "sample": 20},
    "release": {"version": "1.0.0", "shard_rows": 60},
}


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, dask_client) -> dict:
    """One `rrec run` of both domains on the session cluster, then a rerun of the same command."""
    from rrec.cli import app

    root = tmp_path_factory.mktemp("chain")
    config = root / "chain.yaml"
    config.write_text(yaml.safe_dump(SMALL_CHAIN))
    command = ["run", "--out", str(root / "out"), "--config", str(config), "--scheduler", dask_client.scheduler.address]
    first = runner.invoke(app, command)
    head = subprocess.run(["git", "-C", str(root / "out" / "registry"), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    second = runner.invoke(app, command)
    return {"out": root / "out", "first": first, "second": second, "head": head, "cache": root / "cache"}


def test_rrec_run_releases_both_domains_and_says_how_to_load_them(chain: dict) -> None:
    first = chain["first"]
    assert first.exit_code == 0, first.output
    registry = chain["out"] / "registry"
    assert f"Released v1.0.0 (grocery, office) into the local registry {registry}" in first.output
    assert f'load_release("{registry}", "grocery", revision="v1.0.0")' in first.output
    assert sorted(p.name for p in (chain["out"] / "runs").iterdir()) == ["Grocery_and_Gourmet_Food", "Office_Products"]
    for run in (chain["out"] / "runs").iterdir():
        stages = json.loads((run / "manifest.json").read_text())["stages"]
        assert {"ingest", "sequences", "annotate", "filter", "judge", "validate"} <= set(stages)
        assert json.loads((run / "validation" / "summary.json").read_text())["critical_failures"] == 0
    tags = subprocess.run(["git", "-C", str(registry), "tag", "--list"], capture_output=True, text=True, check=True).stdout.split()
    assert tags == ["v1.0.0"]


def test_rerunning_the_same_version_with_unchanged_data_is_already_released(chain: dict) -> None:
    second = chain["second"]
    assert second.exit_code == 0, second.output
    assert "v1.0.0 was already released with the same data" in second.output
    head = subprocess.run(["git", "-C", str(chain["out"] / "registry"), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert head == chain["head"]


def test_gx_is_imported_ahead_only_when_a_validation_is_due(chain: dict, tmp_path: Path) -> None:
    from rrec.chain import validation_due

    domains = SMALL_CHAIN["sample"]["domains"]
    assert validation_due(tmp_path / "fresh", domains, force=False, until="release")
    assert validation_due(tmp_path / "fresh", domains, force=False, until="validate")
    assert not validation_due(tmp_path / "fresh", domains, force=False, until="sequences")
    # The chain's run folders are validated and current: a rerun imports no GX ...
    assert not validation_due(chain["out"], domains, force=False, until="release")
    # ... unless it reruns every stage.
    assert validation_due(chain["out"], domains, force=True, until="release")


def test_the_release_of_the_chain_loads_every_config_and_split(chain: dict) -> None:
    from release.loading import load_release

    registry = chain["out"] / "registry"
    manifest = json.loads((registry / "manifest.json").read_text())
    assert set(manifest["row_counts"]) == {"grocery", "grocery_items", "office", "office_items"}
    for config, counts in manifest["row_counts"].items():
        ds = load_release(registry, config, revision="v1.0.0", cache_dir=chain["cache"])
        assert {split: len(ds[split]) for split in ds} == counts
        expected = datasets.Features.from_arrow_schema(ITEMS if config.endswith("_items") else RELEASE_ROW)
        assert all(ds[split].features == expected for split in ds)
    train = load_release(registry, "grocery", revision="v1.0.0", split="train", cache_dir=chain["cache"])
    assert len(train) > 0 and all(row["rationale"] for row in train)
    row = train[0]
    assert len(row["candidates"]) == 21 and row["candidates"][row["target_index"]]["parent_asin"] == row["target"]["parent_asin"]
    # The registry's working tree is the latest version: plain load_dataset works on it too.
    latest = datasets.load_dataset(str(registry), "office", split="test", cache_dir=str(chain["cache"] / "plain"))
    assert len(latest) == manifest["row_counts"]["office"]["test"]


def test_until_stops_after_the_named_stage_of_every_domain_without_a_release(tmp_path, dask_client) -> None:
    from rrec.cli import app

    config = tmp_path / "chain.yaml"
    config.write_text(yaml.safe_dump({**SMALL_CHAIN, "annotate": {"annotator": "openai"}}))  # never reached: needs no key
    command = [
        "run",
        "--out",
        str(tmp_path / "out"),
        "--config",
        str(config),
        "--scheduler",
        dask_client.scheduler.address,
        "--until",
        "sequences",
    ]
    result = runner.invoke(app, command)

    assert result.exit_code == 0, result.output
    assert "Stopped after sequences" in result.output
    for domain in SMALL_CHAIN["sample"]["domains"]:
        manifest = json.loads((tmp_path / "out" / "runs" / domain / "manifest.json").read_text())
        assert set(manifest["stages"]) == {"ingest", "sequences"}
        assert manifest["stages"]["sequences"]["rows_out"]["sequences"] > 0
    assert not (tmp_path / "out" / "registry").exists()

    wrong = runner.invoke(app, [*command[:-1], "publish"])
    assert wrong.exit_code != 0 and "--until" in wrong.output and "sequences" in wrong.output


@pytest.mark.parametrize(
    ("domains", "message"),
    [
        (["../../ESCAPED_RUN"], "not allowed"),
        (["/tmp/ABSOLUTE_RUN"], "not allowed"),
        (["Foo", "Foo_Items"], "foo_items"),
    ],
)
def test_rrec_run_refuses_names_that_escape_or_collide_before_any_work(tmp_path: Path, domains: list[str], message: str) -> None:
    from rrec.cli import app

    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text("")
    config = tmp_path / "hostile.yaml"
    config.write_text(yaml.safe_dump({"run": {"inputs": {d: {"reviews": [str(reviews)]} for d in domains}}}))
    out = tmp_path / "nested" / "out"
    result = CliRunner().invoke(app, ["run", "--out", str(out), "--config", str(config), "--workers", "1"])
    assert result.exit_code == 2 and message in result.output
    assert not out.exists() and not (tmp_path / "ESCAPED_RUN").exists() and not Path("/tmp/ABSOLUTE_RUN").exists()
