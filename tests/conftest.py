"""Shared fixtures: the real-record sample beside the repository and one Dask cluster per session."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
REAL_SAMPLE = SHARED / "data" / "amazon2023-real-sample" / "Beauty_reviews.jsonl.gz"


@pytest.fixture(scope="session")
def real_reviews() -> Path:
    """Real Amazon Reviews 2023 records (read-only, never copied into the repository)."""
    if not REAL_SAMPLE.exists():
        pytest.skip(f"the real-record sample is not beside the repository ({REAL_SAMPLE} is absent)")
    return REAL_SAMPLE


@pytest.fixture(scope="session")
def dask_client():
    """One two-worker LocalCluster shared by the tests that run stages through Dask."""
    from pipeline.cluster import dask_client as make_client

    with make_client(workers=2) as client:
        yield client
