"""The template annotator's fast paths against its per-row reference, on hostile examples:
the memoised path of ``template.annotate`` and the columnar ``template_columns.template_answers``
(texts, coherence and request hashes equal, worker caches cold or warm, code tables bounded)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as pads
import pytest
from annotation_data import make_run

from pipeline.annotators import catalog, template
from pipeline.teacher_prompt import ExampleContext, ItemFacts


def _hostile_contexts(count: int, seed: int = 7) -> list[ExampleContext]:
    """Random examples over a small vocabulary: ties, case-only differences, empty and missing fields."""
    import random

    rng = random.Random(seed)
    words = ["Coffee", "coffee", "Dark", "ROAST", "roast's", "bean-", "Tea", "green", "pack", "Peak", "x1", "İNDIA", "Crème"]
    paths = [
        ("Grocery & Gourmet Food", "Beverages", "Coffee"),
        ("grocery & gourmet food", "BEVERAGES", "Tea"),
        ("Grocery & Gourmet Food", "Snacks"),
        ("Grocery & Gourmet Food",),
        (),
    ]
    stores = [None, "", "Peak Roasters", "peak roasters", "Leaf"]
    prices = [None, 5.0, 9.99, 10.0, 24.0, 60.0, 150.0]
    shared_paths = [tuple(p) for p in paths]

    def item(n: int) -> ItemFacts:
        title = " ".join(rng.choice(words) for _ in range(rng.randint(0, 18)))
        features = tuple(" ".join(rng.choice(words) for _ in range(3)) for _ in range(rng.randint(0, 2)))
        rating = rng.choice([None, 1.0, 3.0, 4.0, 5.0])
        return ItemFacts(f"B{n:04d}", title, rng.choice(shared_paths), rng.choice(stores), rng.choice(prices), features, rating)

    catalog = [item(n) for n in range(40)]
    contexts = []
    for u in range(count):
        history = tuple(rng.choice(catalog) for _ in range(rng.randint(0, 12)))
        contexts.append(ExampleContext(f"U{u}", "train", history, rng.choice(catalog)))
    return contexts


def test_template_fast_path_equals_the_reference_on_hostile_examples():
    contexts = _hostile_contexts(400)
    for context in contexts:
        reference = [link for link in template.find_links(context) if link.score >= template.MIN_LINK_SCORE]
        assert template.supporting_links(context) == reference[: template.MAX_NAMED_ITEMS]
        preferences = template.user_preferences(context)
        expected = template.answer_from(context, 3, preferences, reference[: template.MAX_NAMED_ITEMS])
        assert template.annotate(context, 3) == expected
    # One memo shared by the whole batch gives each example's answer alone.
    assert template.annotate_many(contexts, 3) == [template.annotate(context, 3) for context in contexts]
    assert any(answer.coherent for answer in template.annotate_many(contexts, 3))


def _reference_answers(run, table, seed: int) -> list[tuple[str, str, bool, str]]:
    """The per-row reference: contexts from the rows, then template.annotate and the request hash."""
    from pipeline.annotators import context as ctx
    from pipeline.annotators.annotation_rows import template_request_hash

    rows = table.to_pylist()
    asins = [item["parent_asin"] for row in rows for item in [*(row["history"] or []), row["target"]]]
    contexts = ctx.contexts_from_rows(rows, catalog.read_item_facts(run, asins), {})
    answers = [template.annotate(context, seed) for context in contexts]
    return [
        (answer.user_preferences, answer.rationale, answer.coherent, template_request_hash(context, seed, answer))
        for context, answer in zip(contexts, answers, strict=True)
    ]


def _columnar_answers(run, table, seed: int) -> list[tuple[str, str, bool, str]] | None:
    from pipeline.annotators.template_columns import template_answers

    answers = template_answers(run, table, seed)
    if answers is None:
        return None
    return list(zip(answers.user_preferences, answers.rationales, answers.coherent, answers.request_hashes, strict=True))


def _write_hostile_run(run, contexts: list[ExampleContext], own_target_facts: bool) -> pa.Table:
    """A run folder whose items table holds the items of ``contexts`` and whose sequences rows
    are the contexts; returns the rows (the context columns). With ``own_target_facts`` every
    third target carries a store and categories of its own that differ from the catalog's."""
    from core.schemas import TABLE_SCHEMAS
    from core.tables import write_part
    from pipeline.annotators.context import CONTEXT_COLUMNS

    items = {item.parent_asin: item for context in contexts for item in [*context.history, context.target]}
    catalog = [
        {
            "parent_asin": i.parent_asin,
            "title": i.title,
            "categories": list(i.categories),
            "store": i.store,
            "price": i.price,
            "features": list(i.features),
        }
        for i in items.values()
    ]
    (run / "items").mkdir(parents=True)
    write_part(pa.Table.from_pylist(catalog, schema=TABLE_SCHEMAS["items"]), run / "items", 0, TABLE_SCHEMAS["items"])
    rows = []
    for number, context in enumerate(contexts):
        target = context.target
        own = own_target_facts and number % 3 == 0
        rows.append(
            {
                "user_id": context.user_id,
                "split": context.split,
                "history": [
                    {"parent_asin": i.parent_asin, "title": i.title, "rating": i.rating, "timestamp": n}
                    for n, i in enumerate(context.history)
                ],
                "target": {
                    "parent_asin": target.parent_asin,
                    "title": target.title,
                    "categories": ["Grocery & Gourmet Food", "Own Shelf"] if own else list(target.categories),
                    "store": "Own Store" if own else target.store,
                    "rating": None,
                    "timestamp": 99,
                },
            }
        )
    schema = TABLE_SCHEMAS["sequences"]
    return pa.Table.from_pylist(rows, schema=pa.schema([schema.field(name) for name in CONTEXT_COLUMNS]))


@pytest.mark.parametrize("own_target_facts", [False, True])
def test_columnar_template_equals_the_per_row_reference_on_hostile_examples(tmp_path, own_target_facts):
    """Ties, case-only differences, empty and missing titles, stores, prices, ratings and
    categories, repeated items, and targets whose sequences row names another store and
    category than the catalog: the columnar annotator writes the reference's texts and hashes."""
    from pipeline.annotators import template_columns

    template_columns.forget_bases()
    table = _write_hostile_run(tmp_path, _hostile_contexts(300, seed=11), own_target_facts)
    expected = _reference_answers(tmp_path, table, 5)
    assert _columnar_answers(tmp_path, table.slice(0, 120), 5) == expected[:120]  # cold worker caches
    assert _columnar_answers(tmp_path, table, 5) == expected  # warm
    assert any(coherent for _, _, coherent, _ in expected) and not all(coherent for _, _, coherent, _ in expected)


def test_columnar_template_equals_the_reference_on_a_run_and_falls_back_where_it_does_not_apply(tmp_path, monkeypatch):
    from pipeline.annotators import template_columns
    from pipeline.annotators.annotation_rows import answers_table, template_table
    from pipeline.annotators.context import CONTEXT_COLUMNS, load_contexts

    run = tmp_path / "run"
    make_run(run, users=30)
    table = pads.dataset(str(run / "sequences")).to_table(columns=CONTEXT_COLUMNS)
    rows = table.to_pylist()
    rows[0]["history"] = None
    rows[1]["history"] = []
    rows[2]["history"] = rows[3]["history"] + rows[3]["history"][:2]  # repeated items
    rows[4]["history"] = [{**item, "title": None, "rating": None} for item in rows[4]["history"]]
    rows[5]["history"] = [{**item, "title": "Another title"} for item in rows[5]["history"]]  # an asin seen under two titles
    rows[6]["target"] = {**rows[6]["target"], "parent_asin": "NOT-IN-CATALOG"}
    table = pa.Table.from_pylist(rows, schema=table.schema)
    expected = _reference_answers(run, table, 0)
    template_columns.forget_bases()
    assert _columnar_answers(run, table.slice(0, 10), 0) == expected[:10]
    assert _columnar_answers(run, table, 0) == expected
    # The annotations table is the reference's, column for column.
    answers = template_columns.template_answers(run, table, 0)
    assert answers_table(table, answers).equals(template_table(load_contexts(run, table, review_titles=False), 0))
    # Past the deepest path it scores (and with history items of another shape) the caller takes the reference.
    monkeypatch.setattr(template_columns, "MAX_PATH_LEVELS", 1)
    assert template_columns.template_answers(run, table, 0) is None
    extra = pa.Table.from_pylist([{**row, "history": [{**item, "store": "Own"} for item in row["history"] or []]} for row in rows[:5]])
    assert template_columns.template_answers(run, extra, 0) is None


def test_columnar_template_code_tables_stay_bounded_and_answers_unchanged(tmp_path, monkeypatch):
    """A catalog of endless distinct stores and categories cannot grow the worker's code tables
    past their bound; starting afresh between partitions never changes an answer."""
    from pipeline.annotators import template_columns

    contexts = []
    for user in range(200):
        items = [
            ItemFacts(f"B{user:05d}{k}", f"Item {user} {k} green tea", ("Grocery", f"Shelf {user}-{k // 2}"), f"Store {user}", 5.0, (), 5.0)
            for k in range(3)
        ]
        contexts.append(ExampleContext(f"U{user}", "train", tuple(items[:2]), items[2]))
    table = _write_hostile_run(tmp_path, contexts, own_target_facts=False)
    expected = _reference_answers(tmp_path, table, 1)
    monkeypatch.setattr(template_columns, "MAX_CODES", 100)
    template_columns.forget_bases()
    for start in range(0, 200, 50):
        assert _columnar_answers(tmp_path, table.slice(start, 50), 1) == expected[start : start + 50]
    assert 50 < len(template_columns._codes) <= 200  # the last partition's codes, not all 400 and more
    assert all(coherent for _, _, coherent, _ in expected)
