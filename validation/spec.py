"""What the suites check, without Great Expectations: tables, severities, scopes, the JSON files.

Everything the ``validate`` stage needs before any check runs lives here, so importing the stage
does not import GX (2.5 s): the tables and the stage that writes each, the severity and scope
vocabulary, the key columns shown beside unexpected values, the patterns the suites share,
and the checked-in suite JSON (``validation/suites/<table>.json``, built by
:mod:`validation.suites`).

Bounds a critical expectation checks come from :mod:`core.records`, the one definition of a
valid record that ingest also enforces.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.records import PARENT_ASIN_PATTERN
from core.schemas import FILTERED, INTERACTIONS, ITEMS, SEQUENCES

SUITES_DIR = Path(__file__).with_name("suites")
TABLES = ("interactions", "items", "sequences", "filtered")
TABLE_STAGE = {"interactions": "ingest", "items": "ingest", "sequences": "sequences", "filtered": "filter"}
"""The stage whose output each validated table is."""
SCHEMAS = {"interactions": INTERACTIONS, "items": ITEMS, "sequences": SEQUENCES, "filtered": FILTERED}

CRITICAL, WARNING = "critical", "warning"
ROW_SCOPE, TABLE_SCOPE = "row", "table"

COMPUTED_BY_GX = "great_expectations"
"""A row expectation run by GX's pandas engine on each partition (the reference engine)."""
COMPUTED_BY_RREC = "rrec_dask"
"""An expectation computed by our own code on the Dask cluster: the whole-table checks, and
the row checks of the default (vectorised Arrow) engine."""
COMPUTED_BY_LABEL = {
    COMPUTED_BY_GX: "computed by Great Expectations (pandas, per partition)",
    COMPUTED_BY_RREC: "computed by rrec's Dask code",
}
SEVERITY_LABEL = {CRITICAL: "CRITICAL (blocks a release)", WARNING: "WARNING (reported, does not block a release)"}

PARENT_ASIN_REGEX = PARENT_ASIN_PATTERN
EMAIL_REGEX = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
# Separators are required so that prices, years and counts ("5 out of 5") do not match.
PHONE_REGEX = r"(?:\+\d{1,3}[\s.-]?)?\(?\b\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}\b"
URL_REGEX = r"(?i)(?:\bhttps?://|\bwww\.)\S+"

# Key columns shown next to each unexpected value, so a reader can find the offending row.
INDEX_COLUMNS: dict[str, list[str]] = {
    "interactions": ["user_id", "src_file", "src_line"],
    "items": ["parent_asin"],
    "sequences": ["user_id", "split"],
    "filtered": ["user_id", "split", "target_parent_asin"],
}


def suite_file(table: str) -> Path:
    """The checked-in suite JSON of ``table``."""
    return SUITES_DIR / f"{table}.json"


def load_suite_json(table: str) -> dict[str, Any]:
    """The checked-in suite of ``table`` as plain JSON (what Dask tasks receive)."""
    path = suite_file(table)
    if not path.exists():
        raise FileNotFoundError(f"suite file {path} is missing; regenerate it with `python -m validation.suites`")
    return json.loads(path.read_text(encoding="utf-8"))


def substitute_parameters(kwargs: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with every ``{"$PARAMETER": name}`` replaced by its value in ``parameters``."""
    return {
        key: parameters[value["$PARAMETER"]] if isinstance(value, dict) and "$PARAMETER" in value else value
        for key, value in kwargs.items()
    }
