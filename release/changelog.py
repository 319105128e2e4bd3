"""CHANGELOG.md of a release: what changed against the previous version.

Rows are compared by their key (user id and target item) per config and split, so "added"
and "removed" mean real examples, not just a difference of counts; the schema is compared
column by column; the self-filter rate (share of annotated rationales the filter rejected) is
compared per config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

CHANGELOG_NAME = "CHANGELOG.md"
_TITLE = "# Changelog"


@dataclass(frozen=True)
class SplitDiff:
    config: str
    split: str
    rows_before: int
    rows_after: int
    added: int
    removed: int


@dataclass(frozen=True)
class ReleaseDiff:
    """The differences between two release folders."""

    splits: list[SplitDiff] = field(default_factory=list)
    configs_added: list[str] = field(default_factory=list)
    configs_removed: list[str] = field(default_factory=list)
    schema_changes: dict[str, list[str]] = field(default_factory=dict)
    filter_rates: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)


def _row_keys(release_dir: Path, config: str, split: str) -> set[tuple[str, ...]]:
    """Keys of one split: (user, target item) for examples, the item id for a catalog."""
    keys: set[tuple[str, ...]] = set()
    for path in sorted((release_dir / "data" / config).glob(f"{split}-*.parquet")):
        if "user_id" in pq.read_schema(path).names:
            table = pq.read_table(path, columns=["user_id", "target"])
            keys.update(zip(table["user_id"].to_pylist(), pc.struct_field(table["target"], "parent_asin").to_pylist()))
        else:
            keys.update((asin,) for asin in pq.read_table(path, columns=["parent_asin"])["parent_asin"].to_pylist())
    return keys


def schema_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Readable differences between two ``{column: arrow type}`` mappings."""
    changes = [f"added column `{name}` ({after[name]})" for name in after if name not in before]
    changes += [f"removed column `{name}` ({before[name]})" for name in before if name not in after]
    changes += [
        f"column `{name}` changed type: {before[name]} -> {after[name]}" for name in after if name in before and before[name] != after[name]
    ]
    return changes


def diff_releases(previous_dir: Path, previous: dict[str, Any], current_dir: Path, current: dict[str, Any]) -> ReleaseDiff:
    """Compare two release folders and their manifests (``row_counts``, ``schema``, ``filter``)."""
    before_configs = set(previous.get("row_counts", {}))
    after_configs = set(current["row_counts"])
    splits: list[SplitDiff] = []
    changes_by_config: dict[str, list[str]] = {}
    for config in sorted(before_configs | after_configs):
        # dict.fromkeys keeps the release order (train, validation, test) and drops repeats.
        split_names = dict.fromkeys([*current["row_counts"].get(config, {}), *previous.get("row_counts", {}).get(config, {})])
        for split in split_names:
            before = _row_keys(previous_dir, config, split)
            after = _row_keys(current_dir, config, split)
            splits.append(SplitDiff(config, split, len(before), len(after), len(after - before), len(before - after)))
        if config in before_configs and config in after_configs:
            changes = schema_changes(previous.get("schema", {}).get(config, {}), current["schema"].get(config, {}))
            if changes:
                changes_by_config[config] = changes
    filter_rates = {
        config: (
            previous.get("filter", {}).get(config, {}).get("filter_rate"),
            current.get("filter", {}).get(config, {}).get("filter_rate"),
        )
        for config in sorted(set(previous.get("filter", {})) | set(current.get("filter", {})))
    }
    return ReleaseDiff(
        splits=splits,
        configs_added=sorted(after_configs - before_configs),
        configs_removed=sorted(before_configs - after_configs),
        schema_changes=changes_by_config,
        filter_rates=filter_rates,
    )


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def render_section(tag: str, date: str, current: dict[str, Any], previous_tag: str | None, diff: ReleaseDiff | None) -> str:
    """The changelog section of one version."""
    lines = [f"## {tag} ({date})", ""]
    if previous_tag is None or diff is None:
        lines += ["Initial release.", "", "| config | split | rows |", "|---|---|---:|"]
        for config, counts in sorted(current["row_counts"].items()):
            lines += [f"| {config} | {split} | {n:,} |" for split, n in counts.items()]
        lines.append("")
        if current.get("filter"):
            lines += ["| config | self-filter rate |", "|---|---:|"]
            lines += [f"| {config} | {_percent(info.get('filter_rate'))} |" for config, info in sorted(current["filter"].items())]
            lines.append("")
        return "\n".join(lines)
    lines += [f"Compared with {previous_tag}.", ""]
    if diff.configs_added:
        lines.append(f"- New configs: {', '.join(diff.configs_added)}")
    if diff.configs_removed:
        lines.append(f"- Removed configs: {', '.join(diff.configs_removed)}")
    if diff.configs_added or diff.configs_removed:
        lines.append("")
    lines += ["### Rows", "", f"| config | split | {previous_tag} | {tag} | added | removed |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {d.config} | {d.split} | {d.rows_before:,} | {d.rows_after:,} | {d.added:,} | {d.removed:,} |" for d in diff.splits]
    lines += ["", "### Schema", ""]
    if diff.schema_changes:
        for config, changes in diff.schema_changes.items():
            lines += [f"- {config}: {change}" for change in changes]
    else:
        lines.append("No schema changes.")
    lines += ["", "### Self-filter rate", "", f"| config | {previous_tag} | {tag} | change |", "|---|---:|---:|---:|"]
    for config, (before, after) in diff.filter_rates.items():
        change = "n/a" if before is None or after is None else f"{100 * (after - before):+.2f} points"
        lines.append(f"| {config} | {_percent(before)} | {_percent(after)} | {change} |")
    lines.append("")
    return "\n".join(lines)


def render_changelog(section: str, previous_changelog: str | None) -> str:
    """The new section on top of the previous version's changelog entries."""
    older = ""
    if previous_changelog:
        older = previous_changelog.strip()
        if older.startswith(_TITLE):
            older = older[len(_TITLE) :].strip()
    parts = [_TITLE, "", section.rstrip(), ""]
    if older:
        parts += [older, ""]
    return "\n".join(parts)
