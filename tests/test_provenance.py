"""The provenance chain: a stage whose inputs changed is stale, so is everything after it, and a
stale run is never released; `rrec run` reruns exactly the stale stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.stage import RunDir
from pipeline.annotate import ANNOTATE, AnnotateSettings
from pipeline.filter import FILTER, FilterSettings
from pipeline.ingest import INGEST, IngestSettings
from pipeline.sample import SampleSettings, generate_domain
from pipeline.sequences import SEQUENCES, SequencesSettings
from release.layout import ReleaseError, check_domain
from validation.runner import VALIDATE, ValidateSettings

pytestmark = pytest.mark.slow  # real subprocesses and stages: tens of seconds

DOMAIN = "Office_Products"


def raw_files(folder: Path, seed: int) -> tuple[Path, Path]:
    report = generate_domain(folder, DOMAIN, SampleSettings(users=260, seed=seed))
    return report.reviews_path, report.meta_path


def ingest(run: Path, files: tuple[Path, Path], client) -> None:
    reviews, meta = files
    INGEST.execute(run, IngestSettings(reviews=[str(reviews)], meta=[str(meta)], domain=DOMAIN), client)


def downstream(run: Path, client, *, validate: bool = True) -> list[bool]:
    """sequences .. validate; returns which stages were skipped (unchanged)."""
    skipped = [
        SEQUENCES.execute(run, SequencesSettings(num_negatives=20), client).skipped,
        ANNOTATE.execute(run, AnnotateSettings(), client).skipped,
        FILTER.execute(run, FilterSettings(), client).skipped,
    ]
    if validate:
        skipped.append(VALIDATE.execute(run, ValidateSettings(), client).skipped)
    return skipped


@pytest.fixture
def validated_run(tmp_path: Path, dask_client) -> Path:
    run = tmp_path / "run"
    ingest(run, raw_files(tmp_path / "first", seed=1), dask_client)
    downstream(run, dask_client)
    check_domain(run)  # releasable
    return run


def test_reingesting_other_input_makes_every_later_stage_stale_and_blocks_the_release(
    validated_run: Path, tmp_path: Path, dask_client
) -> None:
    run = validated_run
    ingest(run, raw_files(tmp_path / "second", seed=2), dask_client)
    stale = RunDir(run).stale_stages()
    assert list(stale) == ["sequences", "annotate", "filter", "validate"]
    assert "ingest" in stale["sequences"]
    with pytest.raises(ReleaseError, match="stage 'sequences' must be rerun first"):
        check_domain(run)

    assert downstream(run, dask_client) == [False, False, False, False]  # every stale stage reran
    assert RunDir(run).stale_stages() == {}
    check_domain(run)


def test_rerunning_the_stages_but_not_validate_still_blocks_the_release(validated_run: Path, tmp_path: Path, dask_client) -> None:
    run = validated_run
    summary_before = json.loads((run / "validation" / "summary.json").read_text())
    ingest(run, raw_files(tmp_path / "second", seed=2), dask_client)
    downstream(run, dask_client, validate=False)
    assert list(RunDir(run).stale_stages()) == ["validate"]
    with pytest.raises(ReleaseError, match="stage 'validate' must be rerun first"):
        check_domain(run)
    # the old summary is still on disk and says success: it is the chain, not the summary, that refuses
    assert json.loads((run / "validation" / "summary.json").read_text()) == summary_before


def test_an_unchanged_rerun_skips_every_stage_and_a_changed_setting_reruns_from_that_stage_on(validated_run: Path, dask_client) -> None:
    run = validated_run
    assert downstream(run, dask_client) == [True, True, True, True]
    changed = SEQUENCES.execute(run, SequencesSettings(num_negatives=15), dask_client)
    assert not changed.skipped
    assert list(RunDir(run).stale_stages()) == ["annotate", "filter", "validate"]


def test_the_chain_names_the_outputs_each_stage_consumed(validated_run: Path) -> None:
    provenance = RunDir(validated_run).provenance()
    assert provenance["sequences"]["upstream"]["ingest"] == provenance["ingest"]["outputs"]
    assert provenance["filter"]["upstream"]["annotate"] == provenance["annotate"]["outputs"]
    assert set(provenance["validate"]["upstream"]) >= {"ingest", "sequences", "filter"}
    assert provenance["ingest"]["source"]["kind"] == "synthetic"
