"""Shared fixtures: the real-record sample beside the repository and one Dask cluster per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
REAL_SAMPLE = SHARED / "data" / "amazon2023-real-sample" / "Beauty_reviews.jsonl.gz"


@pytest.fixture(scope="session")
def real_reviews() -> Path:
    """Real Amazon Reviews 2023 records (read-only, never copied into the repository).

    On a developer's machine without them the tests that need them are skipped with the reason;
    in CI (``CI=true``), where they are always laid beside the clone, their absence fails.
    """
    if not REAL_SAMPLE.exists():
        message = f"the real-record sample is not beside the repository ({REAL_SAMPLE} is absent)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message}; CI must run the real-record tests")
        pytest.skip(message)
    return REAL_SAMPLE


@pytest.fixture(scope="session")
def dask_client():
    """One two-worker LocalCluster shared by the tests that run stages through Dask."""
    from pipeline.cluster import dask_client as make_client

    with make_client(workers=2) as client:
        yield client


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: on a small, shared CPU box, thread contention makes tiny models
    many times slower than a single thread (measured 15x on the 2-core CI machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def isolated_caches(tmp_path, monkeypatch):
    """Fresh release and `datasets` caches: `datasets` keys a local folder's cache by its name,
    so two fixture releases tagged v1.0.0 would otherwise share cached rows."""
    import datasets

    monkeypatch.setenv("RREC_CACHE", str(tmp_path / "rrec-cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder whose tables pass every validation suite (tests/validation_fixtures.py)."""
    from validation_fixtures import build_good_run

    return build_good_run(tmp_path_factory)
