"""Ranking and generation metrics against hand-computed values, and the results files."""

from __future__ import annotations

import json
import math

import pytest

from training.metrics import (
    candidates_per_row,
    generation_metrics,
    judge_generation,
    markdown_table,
    matching_candidates,
    normalise_title,
    ranking_metrics,
    target_rank,
    write_results,
)


def test_rank_counts_candidates_scoring_higher() -> None:
    assert target_rank([0.1, 0.9, 0.5, 0.3], target_index=1) == 0
    assert target_rank([0.1, 0.9, 0.5, 0.3], target_index=3) == 2
    assert target_rank([0.1, 0.9, 0.5, 0.3], target_index=0) == 3


def test_ties_are_broken_by_candidate_position() -> None:
    # Tied with candidates 0 and 3: only the earlier one (0) is ahead of the target at 2.
    assert target_rank([1.0, 0.0, 1.0, 1.0], target_index=2) == 1
    # A constant scorer ranks the target at its own position, like a random ranking would.
    assert [target_rank([0.5] * 6, t) for t in range(6)] == [0, 1, 2, 3, 4, 5]


def test_nan_scores_rank_last() -> None:
    assert target_rank([math.nan, 0.2, 0.1], target_index=2) == 1
    assert target_rank([0.3, math.nan], target_index=1) == 1


def test_rank_rejects_a_target_outside_the_candidates() -> None:
    with pytest.raises(ValueError, match="outside the 3 candidates"):
        target_rank([0.1, 0.2, 0.3], target_index=3)


def test_scripted_ranking_reproduces_hand_computed_metrics() -> None:
    # Five rows whose targets land at ranks 0, 1, 4, 5 and 9.
    scripted = [
        ([9, 1, 2, 3], 0),  # rank 0
        ([5, 9, 1, 2], 0),  # rank 1
        ([1, 9, 8, 7, 6, 5], 0),  # rank 5 -> outside top 5
        ([9, 8, 7, 6, 5, 4], 4),  # rank 4
        ([float(x) for x in range(10, 0, -1)], 9),  # rank 9
    ]
    ranks = [target_rank(scores, t) for scores, t in scripted]
    assert ranks == [0, 1, 5, 4, 9]
    metrics = ranking_metrics(ranks)
    assert metrics["n"] == 5
    assert metrics["HR@1"] == pytest.approx(1 / 5)
    assert metrics["HR@5"] == pytest.approx(3 / 5)
    # NDCG@5 = (1/log2(2) + 1/log2(3) + 1/log2(6)) / 5
    assert metrics["NDCG@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 5)


def test_ranking_metrics_refuse_an_empty_split() -> None:
    with pytest.raises(ValueError, match="split is empty"):
        ranking_metrics([])


def test_title_matching_tries_exact_then_normalised() -> None:
    titles = ["Green Tea, 100 Bags", "green tea 100 bags", "Coffee Beans (1 lb)"]
    assert matching_candidates("Green Tea, 100 Bags", titles) == [0]
    assert matching_candidates("GREEN  tea 100 bags!", titles) == [0, 1]
    assert matching_candidates("coffee beans 1 lb", titles) == [2]
    assert matching_candidates("Black Tea", titles) == []
    assert matching_candidates("  ", titles) == []
    assert matching_candidates("!!", ["??"]) == []
    assert normalise_title("Ｃafé  Crème—Jar") == "café crème jar"


def test_generation_outcomes_partition_into_valid_hallucinated_missing() -> None:
    titles = ["Green Tea", "Coffee Beans", "Rice Crackers"]
    catalog = frozenset(normalise_title(t) for t in [*titles, "Olive Oil"])
    outcomes = [
        judge_generation("Coffee Beans", True, titles, target_index=1, catalog_keys=catalog),  # hit
        judge_generation("green tea", True, titles, target_index=1, catalog_keys=catalog),  # valid miss
        judge_generation("Olive Oil", False, titles, target_index=1, catalog_keys=catalog),  # catalog item
        judge_generation("Moon Cheese", True, titles, target_index=1, catalog_keys=catalog),  # invented
        judge_generation(None, False, titles, target_index=1, catalog_keys=catalog),  # no item block
        judge_generation(" ", True, titles, target_index=1, catalog_keys=catalog),  # empty item block
    ]
    assert [o.hit for o in outcomes] == [True, False, False, False, False, False]
    assert [o.hallucinated for o in outcomes] == [False, False, False, True, False, False]
    assert [o.has_item for o in outcomes] == [True, True, True, True, False, False]
    metrics = generation_metrics(outcomes)
    assert metrics["gen_HR@1"] == pytest.approx(1 / 6)
    assert metrics["valid_rate"] == pytest.approx(3 / 6)
    assert metrics["hallucination_rate"] == pytest.approx(1 / 6)
    assert metrics["in_candidates_rate"] == pytest.approx(2 / 6)
    assert metrics["well_formed_rate"] == pytest.approx(4 / 6)


def test_a_title_shared_with_the_target_counts_as_naming_it() -> None:
    outcome = judge_generation("Green Tea", True, ["Green Tea", "Green Tea", "Soap"], target_index=1)
    assert outcome.hit and outcome.matched_index == 0


def test_results_accumulate_into_one_json_and_table(tmp_path) -> None:
    output = tmp_path / "results" / "grocery.json"
    write_results(output, "grocery", {"random": {"HR@1": 0.01, "HR@5": 0.05, "NDCG@5": 0.03, "n": 100, "candidates": 100}})
    json_path, table_path = write_results(
        output, "grocery", {"A": {"HR@1": 0.0683, "HR@5": 0.1853, "NDCG@5": 0.1258, "n": 100, "gen_HR@1": 0.05, "candidates": 100}}
    )
    saved = json.loads(json_path.read_text())
    assert list(saved) == ["random", "A"]
    assert saved["A"]["gen_HR@1"] == 0.05
    table = table_path.read_text()
    assert table_path.name == "grocery.md"
    assert "| A | 6.83 | 18.53 | 12.58 |" in table
    assert "| Random | 1.00 | 5.00 | 3.00 |" in table
    assert "candidates ranked per row: grocery: 100" in table


def test_one_table_refuses_methods_ranking_different_candidate_sets(tmp_path) -> None:
    output = tmp_path / "grocery.json"
    write_results(output, "grocery", {"popularity": {"HR@1": 0.05, "HR@5": 0.2, "NDCG@5": 0.1, "n": 10, "candidates": 100}})
    with pytest.raises(ValueError, match="different candidate sets"):
        write_results(output, "grocery", {"A": {"HR@1": 0.2, "HR@5": 0.6, "NDCG@5": 0.4, "n": 10, "candidates": 20}})
    assert list(json.loads(output.read_text())) == ["popularity"]  # nothing written


def test_candidates_per_row_is_the_count_or_the_mean_of_unequal_rows() -> None:
    assert candidates_per_row([{"candidates": [1] * 100}] * 3) == 100
    assert candidates_per_row([{"candidates": [1] * 100}, {"candidates": [1] * 99}]) == 99.5
    with pytest.raises(ValueError, match="empty"):
        candidates_per_row([])


def test_results_refuse_to_overwrite_a_foreign_file(tmp_path) -> None:
    output = tmp_path / "notes.json"
    output.write_text("not json")
    with pytest.raises(ValueError, match="choose another --output"):
        write_results(output, "grocery", {"random": {"HR@1": 0.0, "HR@5": 0.0, "NDCG@5": 0.0, "n": 1}})


def test_table_spans_domains_with_dashes_for_missing_methods() -> None:
    table = markdown_table(
        {
            "grocery": {"SASRec": {"HR@1": 0.0302, "HR@5": 0.1511, "NDCG@5": 0.0891, "n": 10}},
            "office": {
                "SASRec": {"HR@1": 0.0292, "HR@5": 0.1376, "NDCG@5": 0.0819, "n": 12},
                "A": {"HR@1": 0.0514, "HR@5": 0.1611, "NDCG@5": 0.1078, "n": 12},
            },
        }
    )
    assert "| Method | grocery HR@1 | grocery HR@5 | grocery NDCG@5 | office HR@1 |" in table
    assert "| SASRec | 3.02 | 15.11 | 8.91 | 2.92 | 13.76 | 8.19 |" in table
    assert "| A | - | - | - | 5.14 | 16.11 | 10.78 |" in table
