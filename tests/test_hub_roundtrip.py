"""Hub round trip without the Hub: push, pull and load a release through the real client libraries.

`tests/hub_loopback.py` serves the Hub HTTP API on 127.0.0.1. `huggingface_hub` and `datasets`
read `HF_ENDPOINT` when they are imported, so every client step runs in a fresh Python process
with `HF_ENDPOINT`, `HF_TOKEN` and an empty `HF_HOME` set, exactly as a user's shell would.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hub_loopback import LoopbackHub

from core.schemas import RELEASE_ROW
from release.hub import HubReleaseError, release_files, version_tag

REPO = Path(__file__).resolve().parent.parent
TOKEN = f"hf_loopback_{secrets.token_hex(12)}"
REPO_ID = "rrec-org/rationale-rec"
ITEMS_SCHEMA = pa.schema([("parent_asin", pa.string()), ("title", pa.string()), ("categories", pa.list_(pa.string()))])


# -- a small release folder in the DESIGN.md layout ------------------------------------------


def release_rows(config: str, split: str, users: int) -> list[dict[str, Any]]:
    """Rows of one split: histories and candidates are lists of structs, some rationales null."""
    rows = []
    for user in range(users):
        history = [
            {
                "parent_asin": f"B{config[0].upper()}{user:03d}{step:05d}",
                "title": f"{config} item {step}",
                "rating": 4.0,
                "timestamp": 1_600_000_000_000 + step,
            }
            for step in range(user % 4 + 1)
        ]
        target = {
            "parent_asin": f"T{config[0].upper()}{user:08d}",
            "title": f"{config} target {user}",
            "categories": [config, "Pantry"],
            "store": "Acme",
            "rating": 5.0,
            "timestamp": 1_700_000_000_000,
        }
        candidates = [{"parent_asin": f"N{config[0].upper()}{user:03d}{n:05d}", "title": f"negative {n}"} for n in range(3)]
        candidates.insert(user % 4, {"parent_asin": target["parent_asin"], "title": target["title"]})
        rows.append(
            {
                "user_id": f"{config}-{split}-U{user:04d}",
                "history": history,
                "target": target,
                "candidates": candidates,
                "target_index": user % 4,
                "rationale": f"User {user} keeps buying {config} staples." if split == "train" or user % 2 else None,
                "user_preferences": "prefers pantry basics",
                "annotator": "template",
                "model": "template-v1",
                "prompt_version": "teacher-v1",
            }
        )
    return rows


SPLIT_SIZES = {"train": 5, "validation": 3, "test": 3}


def build_release(folder: Path, version: str, configs: tuple[str, ...] = ("grocery", "office"), edition: str = "") -> Path:
    """Write README.md (YAML configs), data/<config>/<split>-*.parquet, items and manifest.json."""
    card_configs = []
    for config in configs:
        for split, users in SPLIT_SIZES.items():
            path = folder / "data" / config / f"{split}-00000-of-00001.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(release_rows(config, split, users + len(edition)), schema=RELEASE_ROW), path)
        items = folder / "data" / f"{config}_items" / "items-00000-of-00001.parquet"
        items.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            pa.Table.from_pylist(
                [{"parent_asin": f"T{i:09d}", "title": f"item {i}", "categories": [config]} for i in range(4)], schema=ITEMS_SCHEMA
            ),
            items,
        )
        card_configs.append(
            {"config_name": config, "data_files": [{"split": split, "path": f"data/{config}/{split}-*.parquet"} for split in SPLIT_SIZES]}
        )
        card_configs.append(
            {"config_name": f"{config}_items", "data_files": [{"split": "items", "path": f"data/{config}_items/items-*.parquet"}]}
        )
    metadata = {"pretty_name": "Rationale-augmented sequential recommendation", "license": "other", "configs": card_configs}
    (folder / "README.md").write_text(f"---\n{yaml.safe_dump(metadata, sort_keys=False)}---\n\n# Rationale-rec {version}{edition}\n")
    (folder / "manifest.json").write_text(json.dumps({"version": version, "configs": list(configs)}, indent=2))
    return folder


# -- running the real clients in their own process -------------------------------------------


@dataclass
class ClientRun:
    """What one client process printed, and the value it reported."""

    returncode: int
    stdout: str
    stderr: str
    result: Any


CLIENT_PRELUDE = """
import json, logging, sys
from pathlib import Path
from release.hub import HubReleaseError, download_release, list_versions, push_release

def report(value):
    print("RESULT " + json.dumps(value, default=str))

def attempt(call, *args, **kwargs):
    try:
        return {"value": call(*args, **kwargs)}
    except HubReleaseError as error:
        return {"error": str(error)}
"""


def run_client(env: dict[str, str], code: str, transcript: list[str] | None = None) -> ClientRun:
    """Run `code` (after CLIENT_PRELUDE) in a fresh interpreter with the Hub environment `env`."""
    completed = subprocess.run(
        [sys.executable, "-c", CLIENT_PRELUDE + textwrap.dedent(code)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if transcript is not None:
        transcript += [completed.stdout, completed.stderr]
    results = [line.removeprefix("RESULT ") for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    result = json.loads(results[-1]) if results else None
    assert completed.returncode == 0, f"client process failed:\n{completed.stderr[-4000:]}"
    return ClientRun(completed.returncode, completed.stdout, completed.stderr, result)


def hub_env(hub: LoopbackHub, home: Path, token: str | None = TOKEN) -> dict[str, str]:
    """A user's environment pointed at the loopback Hub, with its own empty HF_HOME."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING_FACE"))}
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_HOME=str(home),
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONPATH=str(REPO),
        NO_PROXY="127.0.0.1,localhost",
    )
    if token is not None:
        env["HF_TOKEN"] = token
    return env


@pytest.fixture(scope="module")
def hub():
    # A page size of 4 makes every tree listing span several pages, like a large repository.
    with LoopbackHub(token=TOKEN, tree_page_size=4) as server:
        yield server


@pytest.fixture(scope="module")
def pushed(hub: LoopbackHub, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Version v1.0.0 (configs grocery and office) pushed once for the module."""
    release_dir = build_release(tmp_path_factory.mktemp("release-v1.0.0"), "v1.0.0")
    env = hub_env(hub, tmp_path_factory.mktemp("hf-home-push"))
    run = run_client(env, f"report(push_release(Path({str(release_dir)!r}), {REPO_ID!r}, '1.0.0'))")
    return {"release_dir": release_dir, "commit": run.result, "env": env}


def files_of(folder: Path) -> dict[str, bytes]:
    return {relative: path.read_bytes() for relative, path in release_files(folder).items()}


# -- tests ------------------------------------------------------------------------------------


def test_push_makes_one_commit_with_every_file_and_tags_it(hub: LoopbackHub, pushed: dict[str, Any]) -> None:
    repo = hub.repo("dataset", REPO_ID)
    assert repo is not None
    assert repo.tags == {"v1.0.0": pushed["commit"]}
    tagged = repo.commits[pushed["commit"]]
    assert tagged.title == "Release v1.0.0"
    assert tagged.parent is not None and repo.commits[tagged.parent].title == "initial commit"
    expected = files_of(pushed["release_dir"])
    assert {path: content for path, content in tagged.files.items() if path != ".gitattributes"} == expected
    assert hub.unknown_requests == []


def test_download_release_returns_the_pushed_files_byte_for_byte(hub: LoopbackHub, pushed: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "pulled"
    run = run_client(pushed["env"], f"report(str(download_release({REPO_ID!r}, 'v1.0.0', Path({str(out)!r}))))")
    assert Path(run.result) == out
    assert files_of(out) == files_of(pushed["release_dir"])
    assert not (out / ".gitattributes").exists()
    assert hub.unknown_requests == []


def test_load_dataset_reads_every_config_and_split_with_release_features(hub: LoopbackHub, pushed: dict[str, Any]) -> None:
    run = run_client(
        pushed["env"],
        f"""
        import datasets
        loaded = {{}}
        for config in ("grocery", "office", "grocery_items"):
            splits = datasets.load_dataset({REPO_ID!r}, config, revision="v1.0.0")
            loaded[config] = {{
                split: {{"rows": ds.num_rows, "features": ds.features.to_dict(), "first": ds[0]}}
                for split, ds in splits.items()
            }}
        # Streaming reads the Parquet shards with HTTP range requests instead of downloading them.
        streamed = datasets.load_dataset({REPO_ID!r}, "office", revision="v1.0.0", split="test", streaming=True)
        loaded["streamed_first_test_row"] = next(iter(streamed))
        report(loaded)
        """,
    )
    import datasets

    release_features = datasets.Features.from_arrow_schema(RELEASE_ROW).to_dict()
    for config in ("grocery", "office"):
        loaded = run.result[config]
        assert set(loaded) == set(SPLIT_SIZES)
        for split, users in SPLIT_SIZES.items():
            assert loaded[split]["rows"] == users
            assert loaded[split]["features"] == release_features
            assert loaded[split]["first"] == release_rows(config, split, users)[0]
    assert run.result["grocery_items"]["items"]["rows"] == 4
    assert run.result["streamed_first_test_row"] == release_rows("office", "test", SPLIT_SIZES["test"])[0]
    assert any(served.startswith("GET /datasets/") and served.endswith("-> 206") for served in hub.requests_served)
    assert hub.unknown_requests == []


def test_pushing_an_existing_version_is_refused_and_changes_nothing(hub: LoopbackHub, pushed: dict[str, Any], tmp_path: Path) -> None:
    repo = hub.repo("dataset", REPO_ID)
    assert repo is not None
    commits_before, tags_before = set(repo.commits), dict(repo.tags)
    changed = build_release(tmp_path / "changed", "v1.0.0", edition="-changed")
    run = run_client(pushed["env"], f"report(attempt(push_release, Path({str(changed)!r}), {REPO_ID!r}, 'v1.0.0'))")
    assert "v1.0.0 already exists" in run.result["error"] and "immutable" in run.result["error"]
    assert set(repo.commits) == commits_before and repo.tags == tags_before


def test_new_version_drops_removed_files_and_old_version_keeps_them(hub: LoopbackHub, pushed: dict[str, Any], tmp_path: Path) -> None:
    grocery_only = build_release(tmp_path / "v1.1.0", "v1.1.0", configs=("grocery",), edition="-more-users")
    run = run_client(
        pushed["env"],
        f"""
        commit = push_release(Path({str(grocery_only)!r}), {REPO_ID!r}, 'v1.1.0')
        report({{"commit": commit, "versions": list_versions({REPO_ID!r})}})
        """,
    )
    repo = hub.repo("dataset", REPO_ID)
    assert repo is not None
    assert run.result["versions"] == ["v1.0.0", "v1.1.0"]
    newest = repo.commits[repo.tags["v1.1.0"]]
    assert {path for path in newest.files if path != ".gitattributes"} == set(files_of(grocery_only))
    assert any(path.startswith("data/office/") for path in repo.commits[repo.tags["v1.0.0"]].files)
    assert hub.unknown_requests == []


def test_unknown_version_is_a_clear_error_listing_the_available_ones(hub: LoopbackHub, pushed: dict[str, Any], tmp_path: Path) -> None:
    run = run_client(pushed["env"], f"report(attempt(download_release, {REPO_ID!r}, 'v9.9.9', Path({str(tmp_path / 'out')!r})))")
    assert run.result["error"].startswith(f"version v9.9.9 does not exist on {REPO_ID}; available versions: v1.0.0")
    assert not (tmp_path / "out").exists()


def test_unknown_repository_has_no_versions_and_pulling_it_is_a_clear_error(
    hub: LoopbackHub, pushed: dict[str, Any], tmp_path: Path
) -> None:
    run = run_client(
        pushed["env"],
        f"""
        report({{
            "versions": list_versions('rrec-org/no-such-dataset'),
            "pull": attempt(download_release, 'rrec-org/no-such-dataset', 'v1.0.0', Path({str(tmp_path / "out")!r})),
        }})
        """,
    )
    assert run.result["versions"] == []
    assert run.result["pull"]["error"].startswith("rrec-org/no-such-dataset has no published versions")


def test_missing_token_is_a_clear_error_and_nothing_is_created(hub: LoopbackHub, tmp_path: Path) -> None:
    release_dir = build_release(tmp_path / "release", "v1.0.0", configs=("grocery",))
    env = hub_env(hub, tmp_path / "empty-hf-home", token=None)
    run = run_client(env, f"report(attempt(push_release, Path({str(release_dir)!r}), 'rrec-org/never-created', 'v1.0.0'))")
    assert run.result["error"].startswith("no Hugging Face token: set HF_TOKEN")
    assert hub.repo("dataset", "rrec-org/never-created") is None


def test_rejected_token_is_a_clear_error_that_does_not_echo_it(hub: LoopbackHub, tmp_path: Path) -> None:
    wrong_token = f"hf_wrong_{secrets.token_hex(12)}"
    release_dir = build_release(tmp_path / "release", "v1.0.0", configs=("grocery",))
    env = hub_env(hub, tmp_path / "hf-home", token=wrong_token)
    run = run_client(env, f"report(attempt(push_release, Path({str(release_dir)!r}), 'rrec-org/never-created', 'v1.0.0'))")
    assert "rejected HF_TOKEN" in run.result["error"]
    assert wrong_token not in run.stdout + run.stderr
    assert hub.repo("dataset", "rrec-org/never-created") is None


def test_unreachable_hub_is_a_clear_error(tmp_path: Path) -> None:
    with LoopbackHub(token=TOKEN) as stopped:
        env = hub_env(stopped, tmp_path / "hf-home")
    run = run_client(env, f"report(attempt(list_versions, {REPO_ID!r}))")
    assert run.result["error"].startswith(f"listing the versions of {REPO_ID}: cannot reach the Hub at {env['HF_ENDPOINT']}")


def test_token_never_appears_in_output_logs_or_written_files(hub: LoopbackHub, tmp_path: Path) -> None:
    release_dir = build_release(tmp_path / "release", "v2.0.0", configs=("grocery",))
    home, out = tmp_path / "hf-home", tmp_path / "pulled"
    transcript: list[str] = []
    run_client(
        hub_env(hub, home),
        f"""
        import datasets
        logging.basicConfig(level=logging.DEBUG)
        push_release(Path({str(release_dir)!r}), 'rrec-org/token-check', 'v2.0.0', private=True)
        download_release('rrec-org/token-check', 'v2.0.0', Path({str(out)!r}))
        report(datasets.load_dataset('rrec-org/token-check', 'grocery', revision='v2.0.0')['train'].num_rows)
        """,
        transcript,
    )
    assert hub.repo("dataset", "rrec-org/token-check").private
    assert files_of(out) == files_of(release_dir)
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert len(written) > 10 and any("DEBUG" in text for text in transcript)
    assert all(TOKEN not in text for text in transcript)
    assert [path for path in written if TOKEN.encode() in path.read_bytes()] == []


def test_version_numbers_are_normalised_to_tags_and_bad_ones_refused() -> None:
    assert version_tag("1.2.0") == version_tag("v1.2.0") == "v1.2.0"
    with pytest.raises(HubReleaseError, match="not semantic"):
        version_tag("latest")


def test_release_files_skip_git_and_download_metadata(tmp_path: Path) -> None:
    build_release(tmp_path, "v1.0.0", configs=("grocery",))
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / ".cache" / "huggingface").mkdir(parents=True)
    (tmp_path / ".cache" / "huggingface" / ".gitignore").write_text("*\n")
    assert sorted(release_files(tmp_path)) == [
        "README.md",
        "data/grocery/test-00000-of-00001.parquet",
        "data/grocery/train-00000-of-00001.parquet",
        "data/grocery/validation-00000-of-00001.parquet",
        "data/grocery_items/items-00000-of-00001.parquet",
        "manifest.json",
    ]


# -- the same round trip through the `rrec release --push` and `rrec pull` commands -----------

CLI_REPO_ID = "rrec-org/cli-round-trip"
RREC = Path(sys.executable).with_name("rrec")


def run_rrec(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed `rrec` command like a user would; the token must never reach its output."""
    completed = subprocess.run([str(RREC), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert TOKEN not in completed.stdout + completed.stderr
    return completed


@pytest.fixture(scope="module")
def cli_release(hub: LoopbackHub, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A validated run folder released as 1.0.0 into a local registry and pushed with the CLI."""
    from release_runs import make_run

    work = tmp_path_factory.mktemp("cli-release")
    run_dir = make_run(work / "runs", users=12)
    env = hub_env(hub, work / "hf-home")
    released = run_rrec(
        env,
        "release",
        "--runs",
        str(run_dir),
        "--registry",
        str(work / "registry"),
        "--version",
        "1.0.0",
        "--push",
        "--repo-id",
        CLI_REPO_ID,
        cwd=work,
    )
    assert released.returncode == 0, released.stderr[-3000:]
    return {"work": work, "env": env, "run": run_dir, "stdout": released.stdout}


def test_cli_release_push_creates_the_tagged_version_on_the_hub(hub: LoopbackHub, cli_release: dict[str, Any]) -> None:
    repo = hub.repo("dataset", CLI_REPO_ID)
    assert repo is not None and list(repo.tags) == ["v1.0.0"]
    assert f"Pushed v1.0.0 to the Hub dataset {CLI_REPO_ID}" in cli_release["stdout"]
    published = repo.commits[repo.tags["v1.0.0"]].files
    manifest = json.loads(published["manifest.json"])
    assert set(manifest["files"]) | {"manifest.json", ".gitattributes"} == set(published)
    assert hub.unknown_requests == []


def test_cli_pull_from_the_hub_verifies_and_the_version_loads_with_datasets(hub: LoopbackHub, cli_release: dict[str, Any]) -> None:
    out = cli_release["work"] / "pulled"
    pulled = run_rrec(cli_release["env"], "pull", CLI_REPO_ID, "--revision", "v1.0.0", "--out", str(out), cwd=cli_release["work"])
    assert pulled.returncode == 0, pulled.stderr[-3000:]
    repo = hub.repo("dataset", CLI_REPO_ID)
    published = {path: content for path, content in repo.commits[repo.tags["v1.0.0"]].files.items() if path != ".gitattributes"}
    assert files_of(out) == published
    row_counts = json.loads(published["manifest.json"])["row_counts"]
    run = run_client(
        cli_release["env"],
        f"""
        import datasets
        splits = datasets.load_dataset({CLI_REPO_ID!r}, "grocery", revision="v1.0.0")
        report({{split: [ds.num_rows, ds.features.to_dict()] for split, ds in splits.items()}})
        """,
    )
    import datasets

    release_features = datasets.Features.from_arrow_schema(RELEASE_ROW).to_dict()
    assert {split: rows for split, (rows, _) in run.result.items()} == row_counts["grocery"]
    assert all(features == release_features for _, features in run.result.values())
    assert hub.unknown_requests == []


def test_cli_pull_refuses_a_version_whose_tag_was_moved_to_tampered_files(hub: LoopbackHub, cli_release: dict[str, Any]) -> None:
    # A commit's content is fixed by its id (clients cache by it), so tampering on a Hub means a
    # new commit with a changed shard and the version tag moved onto it.
    repo = hub.repo("dataset", CLI_REPO_ID)
    genuine = repo.tags["v1.0.0"]
    shard = "data/grocery/train-00000-of-00001.parquet"
    files = dict(repo.commits[genuine].files)
    files[shard] = files[shard][:-8] + b"tampered"
    head = repo.branches["main"]
    repo.tags["v1.0.0"] = repo.add_commit("main", "tampered", files).oid
    try:
        out = cli_release["work"] / "tampered"
        pulled = run_rrec(cli_release["env"], "pull", CLI_REPO_ID, "--revision", "v1.0.0", "--out", str(out), cwd=cli_release["work"])
    finally:
        repo.tags["v1.0.0"], repo.branches["main"] = genuine, head
    assert pulled.returncode == 2
    assert "checksum mismatch" in pulled.stderr and shard in pulled.stderr and "Traceback" not in pulled.stderr
    assert not out.exists()


def test_cli_release_of_an_existing_version_pushes_nothing(hub: LoopbackHub, cli_release: dict[str, Any]) -> None:
    repo = hub.repo("dataset", CLI_REPO_ID)
    commits_before, tags_before = set(repo.commits), dict(repo.tags)
    again = run_rrec(
        cli_release["env"],
        "release",
        "--runs",
        str(cli_release["run"]),
        "--registry",
        str(cli_release["work"] / "registry"),
        "--version",
        "1.0.0",
        "--push",
        "--repo-id",
        CLI_REPO_ID,
        cwd=cli_release["work"],
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already released" in again.stdout
    assert set(repo.commits) == commits_before and repo.tags == tags_before


def test_cli_push_without_token_is_one_clear_line(hub: LoopbackHub, cli_release: dict[str, Any], tmp_path: Path) -> None:
    env = hub_env(hub, tmp_path / "empty-hf-home", token=None)
    # The version is in the local registry already, so only the push to a new repository is left.
    pushed = run_rrec(
        env,
        "release",
        "--runs",
        str(cli_release["run"]),
        "--registry",
        str(cli_release["work"] / "registry"),
        "--version",
        "1.0.0",
        "--push",
        "--repo-id",
        "rrec-org/cli-no-token",
        cwd=tmp_path,
    )
    assert pushed.returncode == 2
    assert "error: no Hugging Face token: set HF_TOKEN" in pushed.stderr and "Traceback" not in pushed.stderr
    assert hub.repo("dataset", "rrec-org/cli-no-token") is None


@pytest.mark.parametrize("command", ["pull", "release --push"])
def test_offline_mode_is_one_clear_line_for_pull_and_push(
    command: str, hub: LoopbackHub, cli_release: dict[str, Any], tmp_path: Path
) -> None:
    env = {**hub_env(hub, tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1"}
    if command == "pull":
        args = ["pull", CLI_REPO_ID, "--revision", "v1.0.0", "--out", str(tmp_path / "pulled")]
    else:
        registry = tmp_path / "registry"
        args = ["release", "--runs", str(cli_release["run"]), "--registry", str(registry), "--version", "1.0.0"]
        args += ["--push", "--repo-id", "rrec-org/offline"]
    done = run_rrec(env, *args, cwd=tmp_path)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("deprecated")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "HF_HUB_OFFLINE" in lines[0], done.stderr
    assert not (tmp_path / "pulled").exists() and not (tmp_path / "registry").exists()
    assert hub.repo("dataset", "rrec-org/offline") is None


def test_pushing_a_version_below_the_newest_on_the_hub_is_refused(hub: LoopbackHub, pushed: dict[str, Any], tmp_path: Path) -> None:
    repo = hub.repo("dataset", REPO_ID)
    main_before, tags_before = repo.branches["main"], dict(repo.tags)
    older = build_release(tmp_path / "older", "v0.9.0")
    run = run_client(pushed["env"], f"report(attempt(push_release, Path({str(older)!r}), {REPO_ID!r}, '0.9.0'))")
    assert "lower than" in run.result["error"] and "newest version on" in run.result["error"]
    assert repo.branches["main"] == main_before and repo.tags == tags_before
