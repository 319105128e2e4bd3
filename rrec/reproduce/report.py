"""Per-row ranks -> metrics with 95% bootstrap intervals, the Markdown table and the Fig. 2-style plot.

A method's per-row value of a metric is averaged over the training seeds first; the interval
resamples test rows (a percentile bootstrap), so it covers the uncertainty of a test set of
this size. The A-minus-C gap is bootstrapped on paired rows (the same resample for both).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.metrics import hit_at, ndcg_at

METRICS = ("HR@1", "HR@5", "NDCG@5")
METHODS = ("A", "B", "C", "SFT+GRPO", "random", "popularity", "sasrec")
WORLDS = ("planted", "control")


def per_row(ranks: np.ndarray, metric: str) -> np.ndarray:
    """One metric per row from 0-based target ranks of shape (seeds, rows), averaged over seeds."""
    value = {"HR@1": lambda r: hit_at(r, 1), "HR@5": lambda r: hit_at(r, 5), "NDCG@5": lambda r: ndcg_at(r, 5)}[metric]
    return np.vectorize(value, otypes=[float])(ranks).mean(axis=0)


def bootstrap(values: np.ndarray, resamples: int, seed: int) -> dict[str, float]:
    """Mean of ``values`` and its 95% percentile-bootstrap interval over rows."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    mean = float(values.mean())
    return {"mean": mean, "low": min(float(low), mean), "high": max(float(high), mean)}


def summarise(ranks: Mapping[str, Mapping[str, np.ndarray]], seeds: Sequence[int], resamples: int, seed: int = 0) -> dict[str, Any]:
    """``results.json``: world -> method -> metric -> {mean, low, high}, plus ``n``, ``seeds``, ``A_minus_C`` and ``per_seed``."""
    results: dict[str, Any] = {}
    gaps: dict[str, Any] = {}
    n = 0
    for world in WORLDS:
        results[world] = {}
        for method in METHODS:
            method_ranks = ranks[world][method]
            n = method_ranks.shape[1]
            results[world][method] = {metric: bootstrap(per_row(method_ranks, metric), resamples, seed) for metric in METRICS}
        gaps[world] = {
            metric: bootstrap(per_row(ranks[world]["A"], metric) - per_row(ranks[world]["C"], metric), resamples, seed)
            for metric in METRICS
        }
    per_seed = {
        world: {
            method: {metric: [float(per_row(r[None], metric).mean()) for r in ranks[world][method]] for metric in METRICS}
            for method in METHODS
        }
        for world in WORLDS
    }
    return {**results, "A_minus_C": gaps, "per_seed": per_seed, "n": n, "seeds": list(seeds)}


def _cell(stat: Mapping[str, float]) -> str:
    return f"{100 * stat['mean']:.1f} [{100 * stat['low']:.1f}, {100 * stat['high']:.1f}]"


def markdown(results: Mapping[str, Any]) -> str:
    """Both worlds in one table (percent, 95% intervals) and the A-minus-C gap per world."""
    header = "| world | method | " + " | ".join(METRICS) + " |"
    lines = [header, "|" + "---|" * (2 + len(METRICS))]
    for world in WORLDS:
        for method in METHODS:
            lines.append(f"| {world} | {method} | " + " | ".join(_cell(results[world][method][m]) for m in METRICS) + " |")
    lines += ["", "A minus C (paired bootstrap over test rows; an interval that holds 0 means no detectable gain):", ""]
    lines += ["| world | " + " | ".join(METRICS) + " |", "|" + "---|" * (1 + len(METRICS))]
    for world in WORLDS:
        lines.append(f"| {world} | " + " | ".join(_cell(results["A_minus_C"][world][m]) for m in METRICS) + " |")
    lines += ["", "HR@1 per seed (the intervals above resample test rows, not seeds):", ""]
    for world in WORLDS:
        cells = ", ".join(
            f"{m} {' / '.join(f'{100 * v:.1f}' for v in results['per_seed'][world][m]['HR@1'])}" for m in ("A", "C", "SFT+GRPO")
        )
        lines.append(f"- {world}: {cells}")
    if "reference" in results:
        lines += [
            "",
            f"The rules' own prediction (the known answer) hits {100 * results['reference']['rules_HR@1']:.1f}% of test rows at rank 1.",
        ]
    lines += ["", f"{results['n']} test rows, 100 candidates per row, seeds {results['seeds']}; values in %, 95% bootstrap intervals."]
    return "\n".join(lines) + "\n"


def figure(results: Mapping[str, Any], path: Path) -> None:
    """Fig. 2-style grouped bars: one panel per metric, methods on the x axis, one bar per world."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.6), sharey=False)
    x = np.arange(len(METHODS))
    width = 0.38
    for axis, metric in zip(axes, METRICS):
        for offset, world in zip((-width / 2, width / 2), WORLDS):
            stats = [results[world][method][metric] for method in METHODS]
            means = np.array([100 * s["mean"] for s in stats])
            errors = np.array([[100 * (s["mean"] - s["low"]) for s in stats], [100 * (s["high"] - s["mean"]) for s in stats]])
            axis.bar(x + offset, means, width, yerr=errors, capsize=2, label=world)
        axis.set_xticks(x, METHODS, rotation=35, ha="right")
        axis.set_title(metric)
        axis.set_ylabel("%")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, [f"{label} world" for label in labels], loc="lower center", ncol=len(WORLDS), frameon=False)
    fig.suptitle(f"Known-answer world: {results['n']} test rows, seeds {results['seeds']} (95% bootstrap intervals)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(out: Path, results: Mapping[str, Any]) -> None:
    """``results.json``, ``results.md`` and ``figure.png`` in ``out``."""
    out = Path(out)
    (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True), encoding="utf-8")
    (out / "results.md").write_text(markdown(results), encoding="utf-8")
    figure(results, out / "figure.png")
