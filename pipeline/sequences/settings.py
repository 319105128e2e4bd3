"""Settings of the ``sequences`` stage (a light module: the release reads its defaults)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.config import StageSettings

STAGE = "sequences"


class SequencesSettings(StageSettings):
    """Settings of `rrec sequences` (config section ``sequences``)."""

    k: int = Field(5, ge=0, description="k of the iterative k-core on users and items; 0 disables it")
    train_targets: Literal["last", "all"] = Field(
        "last", description="'last': one train row per user (the item before the validation target); 'all': one per prefix"
    )
    max_history: int = Field(50, ge=0, description="history keeps the last N items; 0 keeps the whole history")
    num_negatives: int = Field(99, ge=0, description="negatives per candidate set (plus the target)")
    sample_users: int | None = Field(None, ge=1, description="keep a seeded sample of N users after k-core")
    seed: int = 42
    events_per_partition: int | None = Field(
        None,
        ge=1,
        description="interactions per Dask partition (output layout only, never its content); default: an eighth of "
        "the interactions, at most 1,000,000",
    )
