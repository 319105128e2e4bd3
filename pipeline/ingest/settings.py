"""The settings of ``rrec ingest`` and the constants its modules share."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from core.config import StageSettings

STAGE = "ingest"
MIB = 1024 * 1024
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_PARTS = 99_999
"""Part names have five digits; more parts would no longer read back in order."""


class IngestSettings(StageSettings):
    """Settings of ``rrec ingest`` (YAML section ``ingest``; option names with underscores)."""

    reviews: list[str] = Field(min_length=1, description="Review files: paths, globs, fsspec URLs or hub:<Domain>.")
    meta: list[str] = Field(default_factory=list, description="Item metadata files, named like reviews.")
    domain: str | None = Field(None, description="Domain name; default: derived from the file names.")
    block_size: int = Field(64 * MIB, ge=1024, description="Bytes of decompressed text per parallel block.")
    max_line_bytes: int = Field(1 * MIB, ge=64, description="Longer lines are rejected as line_too_long.")
    hub_repo: str = Field("McAuley-Lab/Amazon-Reviews-2023", description="Dataset repository that hub:<Domain> reads.")

    @field_validator("reviews", "meta", mode="before")
    @classmethod
    def _one_name_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value
