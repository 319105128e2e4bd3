"""A release killed with SIGKILL at each step is finished by the next one; versions only increase."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from release_runs import make_run, rrec_commands
from typer.testing import CliRunner

from release.checksums import verify_release
from release.layout import ReleaseError
from release.loading import load_release
from release.publish import ReleaseSettings, release_runs
from release.registry import CRASH_ENV, CRASH_POINTS, STAGING_PREFIX, Registry

TESTS = Path(__file__).resolve().parent
RELEASE_IN_A_PROCESS = """
import sys
from pathlib import Path
from release.publish import ReleaseSettings, release_runs
release_runs([Path(sys.argv[1])], Path(sys.argv[2]), ReleaseSettings(version=sys.argv[3]))
"""
runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A grocery run and a grown one (five more users), released as 1.0.0 and 1.1.0."""
    root = tmp_path_factory.mktemp("runs")
    return make_run(root / "first"), make_run(root / "grown", extra_users=5)


@pytest.fixture(scope="module")
def base_registry(runs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    registry = tmp_path_factory.mktemp("base") / "registry"
    release_runs([runs[0]], registry, ReleaseSettings(version="1.0.0"))
    return registry


def git(registry: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(registry), *args], capture_output=True, text=True, check=True).stdout


def release_killed_at(point: str, run: Path, registry: Path, version: str) -> subprocess.CompletedProcess:
    """Run a release in its own process group; the release SIGKILLs that group at ``point``."""
    env = {**os.environ, CRASH_ENV: point, "PYTHONPATH": f"{TESTS}{os.pathsep}{TESTS.parent}"}
    return subprocess.run(
        [sys.executable, "-c", RELEASE_IN_A_PROCESS, str(run), str(registry), version],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        start_new_session=True,
    )


def assert_clean_registry(registry: Path, newest: str) -> None:
    """The working tree is exactly the newest version, and nothing of a killed release is left."""
    assert git(registry, "status", "--porcelain", "--untracked-files=all") == ""
    assert git(registry, "rev-parse", "HEAD") == git(registry, "rev-list", "-n", "1", newest)
    assert json.loads((registry / "manifest.json").read_text())["tag"] == newest
    verify_release(registry)
    assert not list((registry / ".git").glob(f"{STAGING_PREFIX}*"))
    assert not (registry / ".git" / "index.lock").exists()


@pytest.mark.slow
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_release_killed_at_any_step_is_finished_by_the_next_release(
    point: str, runs: tuple[Path, Path], base_registry: Path, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    shutil.copytree(base_registry, registry, symlinks=True)
    killed = release_killed_at(point, runs[1], registry, "1.1.0")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    published = point in ("tagged", "working-tree")  # the tag is the moment of publication
    assert Registry(registry).has("1.1.0") is published

    result = release_runs([runs[1]], registry, ReleaseSettings(version="1.1.0"))
    assert result.status == ("already_released" if published else "released")
    assert Registry(registry).versions() == ["v1.0.0", "v1.1.0"]
    assert_clean_registry(registry, "v1.1.0")
    assert "## v1.1.0" in (registry / "CHANGELOG.md").read_text()
    assert git(registry, "rev-list", "--count", "HEAD").strip() == "2"


@pytest.mark.parametrize("point", ["tagged", "working-tree"])
def test_a_first_release_killed_after_its_tag_is_finished_by_the_next_release(point: str, runs: tuple[Path, Path], tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    killed = release_killed_at(point, runs[0], registry, "1.0.0")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert Registry(registry).versions() == ["v1.0.0"]
    assert release_runs([runs[0]], registry, ReleaseSettings(version="1.0.0")).status == "already_released"
    assert_clean_registry(registry, "v1.0.0")


def test_a_stale_git_index_lock_and_staging_folder_are_cleared_under_the_release_lock(
    runs: tuple[Path, Path], base_registry: Path, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    shutil.copytree(base_registry, registry, symlinks=True)
    # What `git add` or `git reset` leave when killed, and a killed release's staging folder.
    (registry / ".git" / "index.lock").write_bytes(b"")
    (registry / ".git" / f"{STAGING_PREFIX}dead" / "v1.1.0" / "data").mkdir(parents=True)
    (registry / "data" / "grocery" / "test-00000-of-00001.parquet").unlink()  # half-replaced working tree
    assert release_runs([runs[1]], registry, ReleaseSettings(version="1.1.0")).status == "released"
    assert_clean_registry(registry, "v1.1.0")


def test_a_main_branch_that_no_version_names_is_reported_with_the_command_to_fix_it(base_registry: Path, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    shutil.copytree(base_registry, registry, symlinks=True)
    (registry / "notes.txt").write_text("by hand")
    git(registry, "add", "notes.txt")
    git(registry, "-c", "user.name=x", "-c", "user.email=x@example.invalid", "commit", "-q", "-m", "by hand")
    with pytest.raises(ReleaseError, match=r"no version tag names.*reset --hard v1\.0\.0"), Registry(registry).publishing():
        pass


def test_a_version_not_above_the_newest_is_refused_and_allow_older_adds_only_a_tag(
    runs: tuple[Path, Path], base_registry: Path, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    shutil.copytree(base_registry, registry, symlinks=True)
    release_runs([runs[1]], registry, ReleaseSettings(version="1.1.0"))
    changelog = (registry / "CHANGELOG.md").read_text()
    app = rrec_commands()

    refused = runner.invoke(app, ["release", "--runs", str(runs[1]), "--registry", str(registry), "--version", "1.0.5"])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "lower than the newest version v1.1.0" in refused.output and "1.1.1 or higher" in refused.output
    assert "--allow-older" in refused.output
    assert Registry(registry).versions() == ["v1.0.0", "v1.1.0"]

    older = runner.invoke(app, ["release", "--runs", str(runs[1]), "--registry", str(registry), "--version", "1.0.5", "--allow-older"])
    assert older.exit_code == 0, older.output
    assert "Released v1.0.5" in older.output and "as a tag only; the working tree stays at the newest version v1.1.0" in older.output
    assert Registry(registry).versions() == ["v1.0.0", "v1.0.5", "v1.1.0"]
    # The working tree, main and the CHANGELOG stay at the newest version.
    assert_clean_registry(registry, "v1.1.0")
    assert (registry / "CHANGELOG.md").read_text() == changelog
    assert git(registry, "rev-list", "--count", "HEAD").strip() == "2"
    # The older version is complete in its tag and compares itself with the version below it.
    manifest = Registry(registry).manifest("v1.0.5")
    assert manifest["tag"] == "v1.0.5" and manifest["previous_version"] == "v1.0.0"
    assert git(registry, "rev-parse", "v1.0.5^{commit}^") == git(registry, "rev-parse", "v1.0.0^{commit}")


def test_loading_a_registry_at_an_unknown_revision_lists_the_versions(base_registry: Path, tmp_path: Path) -> None:
    with pytest.raises(ReleaseError, match=r"version v9\.9\.9 is not in registry .*available: v1\.0\.0"):
        load_release(base_registry, "grocery", revision="v9.9.9", cache_dir=tmp_path / "cache")
    ds = load_release(base_registry, "grocery", revision="v1.0.0", split="test", cache_dir=tmp_path / "cache")
    assert len(ds) == Registry(base_registry).manifest("v1.0.0")["row_counts"]["grocery"]["test"]


def test_pull_takes_revision_and_the_old_version_spelling_still_works_with_a_warning(base_registry: Path, tmp_path: Path) -> None:
    app = rrec_commands()
    pulled = runner.invoke(app, ["pull", str(base_registry), "--revision", "v1.0.0", "--out", str(tmp_path / "a")])
    assert pulled.exit_code == 0, pulled.output
    assert "deprecated" not in pulled.output
    old = runner.invoke(app, ["pull", str(base_registry), "--version", "v1.0.0", "--out", str(tmp_path / "b")])
    assert old.exit_code == 0, old.output
    assert "deprecated: --version is renamed --revision" in old.output
    assert verify_release(tmp_path / "b")["tag"] == "v1.0.0"
    both = runner.invoke(app, ["pull", str(base_registry), "--version", "v1.0.0", "--revision", "v1.0.0", "--out", str(tmp_path / "c")])
    assert both.exit_code == 2 and "give only --revision" in both.output


def test_resolve_source_pins_the_newest_version_or_lists_the_published_ones(base_registry: Path) -> None:
    from release.loading import resolve_source

    pinned = resolve_source(str(base_registry), "grocery", None)
    assert (pinned.kind, pinned.revision) == ("registry", "v1.0.0")
    assert pinned.commit == git(base_registry, "rev-list", "-n", "1", "v1.0.0").strip()
    with pytest.raises(ReleaseError, match=r"version v2\.0\.0 is not in registry .*available: v1\.0\.0"):
        resolve_source(str(base_registry), "grocery", "2.0.0")
