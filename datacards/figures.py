"""PNG figures of a domain's statistics, written into the release and shown in the card."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from datacards.statistics import DomainStatistics

FIGURES_DIR = "figures"
TOP_CATEGORIES = 15
# No version string in the PNG: rebuilding a card with another matplotlib should not change it.
_PNG_METADATA = {"Software": None}


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata=_PNG_METADATA)  # Agg, to a file: no display, no pyplot state


def _histogram(counts: dict[int, int], title: str, xlabel: str, path: Path) -> None:
    """A histogram of a sample given as ``{value: how often}`` (weights, not one entry per row)."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    if counts:
        bins = min(50, max(1, len(counts)))
        ax.hist(list(counts), bins=bins, weights=list(counts.values()), color="#4C72B0", edgecolor="white")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    _save(fig, path)


def _bars(counts: list[tuple[str, int]], title: str, xlabel: str, path: Path) -> None:
    fig = Figure(figsize=(7, max(2.5, 0.35 * len(counts) + 1)))
    ax = fig.subplots()
    if counts:
        labels = [label if len(label) <= 40 else label[:37] + "..." for label, _ in counts][::-1]
        ax.barh(labels, [n for _, n in counts][::-1], color="#55A868")
    else:
        ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    _save(fig, path)


def render_figures(stats: DomainStatistics, release_dir: Path) -> dict[str, str]:
    """Write the four figures of one config; returns ``{kind: path relative to the release}``.

    Figures are drawn without pyplot's global state, so another thread may draw them (the
    publisher does while the cluster writes the shards)."""
    folder = Path(release_dir) / FIGURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    names = {
        kind: f"{FIGURES_DIR}/{stats.config}_{kind}.png"
        for kind in ("history_length", "items_per_category", "rationale_length", "filter_reasons")
    }
    root = Path(release_dir)
    _histogram(
        stats.history_length.counts,
        f"{stats.config}: history length per user",
        "items in history (test row)",
        root / names["history_length"],
    )
    _bars(
        stats.items_per_category[:TOP_CATEGORIES],
        f"{stats.config}: catalog items per category (top {TOP_CATEGORIES})",
        "items",
        root / names["items_per_category"],
    )
    _histogram(stats.rationale_words.counts, f"{stats.config}: rationale length (train)", "words", root / names["rationale_length"])
    _bars(
        list(stats.filter_reasons.items()),
        f"{stats.config}: self-filter rejects by reason",
        "rationales rejected",
        root / names["filter_reasons"],
    )
    return names
