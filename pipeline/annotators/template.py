"""The offline default annotator: deterministic, grounded rationales without any model.

For each history item it measures what the target shares with it: the deepest common category,
the same store (brand), title and feature keywords, the price band, and whether the user rated
it highly. The best-supported items (at most three) are named by title in a rationale assembled
from several phrasings, chosen by a hash of (seed, user, target) so the wording varies across
rows but never between runs.

The rationale reasons forward, as a model decoding "rationale first" must: it states the
evidence from the history first (stores, categories, shared words, prices, ratings) and reaches
the item last. The target's title appears only in the final sentence. When nothing links the target to the history the answer is
``coherent=false`` with the reason, exactly like a teacher LLM's flag.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import operator
import re
import sys
from collections import Counter
from dataclasses import dataclass

from pipeline.teacher_prompt import ExampleContext, ItemFacts, TeacherAnswer

TEMPLATE_VERSION = "template-v2"
MAX_NAMED_ITEMS = 3
MAX_TITLE_WORDS = 14
# Evidence weights: a shared store or a specific shared category says more than a shared word.
STORE_WEIGHT = 3.0
CATEGORY_WEIGHT = 1.0  # per shared category level below the domain root
KEYWORD_WEIGHT = 1.0
PRICE_WEIGHT = 0.5
MIN_LINK_SCORE = 2.0

_WORD = re.compile(r"[a-z][a-z0-9'-]{3,}")
STOPWORDS = frozenset(
    [
        "with",
        "from",
        "that",
        "this",
        "your",
        "pack",
        "count",
        "ounce",
        "ounces",
        "size",
        "each",
        "more",
        "free",
        "made",
        "best",
        "great",
        "premium",
        "quality",
        "natural",
        "original",
        "value",
        "pound",
        "pounds",
        "inch",
        "inches",
        "case",
        "piece",
        "pieces",
        "item",
        "items",
        "product",
        "products",
        "brand",
        "style",
        "assorted",
        "variety",
        "new",
        "per",
        "plus",
        "ultra",
        "extra",
    ]
)
PRICE_BANDS = ((10.0, "under $10"), (25.0, "$10-25"), (50.0, "$25-50"), (100.0, "$50-100"))


def price_band(price: float | None) -> str | None:
    if price is None:
        return None
    for bound, label in PRICE_BANDS:
        if price < bound:
            return label
    return "over $100"


MAX_MEMO_ITEMS = 1 << 17
"""Most items whose :func:`_derived` values and words a worker process keeps between batches
(the oldest half goes when full). The one bound of every per-item cache of annotate and filter
(``context.MAX_CACHED_BASES`` is the same value; the measurements behind it are there)."""


@functools.lru_cache(maxsize=MAX_MEMO_ITEMS)
def _content_words(title: str, features: tuple[str, ...], store: str) -> frozenset[str]:
    # The plain form (find_links, and so the judge); the annotator reads _item_words. Cached:
    # an item recurs in many histories, and the texts are the key, so it cannot go stale.
    text = " ".join([title, *features]).lower()
    store_words = set(_WORD.findall(store.lower()))
    return frozenset({w.strip("'-") for w in _WORD.findall(text)} - STOPWORDS - store_words)


def keywords(item: ItemFacts) -> frozenset[str]:
    """Content words of an item's title and features (lower case, no filler or store words)."""
    return _content_words(item.title, item.features, item.store or "")


def title_keywords(item: ItemFacts) -> frozenset[str]:
    """Content words of the title alone (store name excluded: it is evidence of its own)."""
    return _content_words(item.title, (), item.store or "")


def _words(text: str) -> frozenset[str]:
    """The words of a text, lower case, without the quotes and hyphens that end some."""
    lowered = text.lower()
    if "'" not in lowered and "-" not in lowered:  # nothing to strip
        return frozenset(_WORD.findall(lowered))
    return frozenset([w.strip("'-") for w in _WORD.findall(lowered)])


@functools.lru_cache(maxsize=1 << 14)
def _excluded_words(store: str) -> frozenset[str]:
    # Cached: a catalog has a few thousand stores. A store's words are found unstripped, as
    # _content_words finds them.
    return STOPWORDS.union(_WORD.findall(store.lower()))


@functools.lru_cache(maxsize=MAX_MEMO_ITEMS // 2)  # two word sets an entry: as many as _content_words holds
def _item_words(title: str, features: tuple[str, ...], store: str) -> tuple[frozenset[str], frozenset[str]]:
    """``(keywords, title_keywords)`` of an item, equal to :func:`_content_words` of each.

    Each text is read once: no word can span the spaces that join the title and the features,
    so the title's words (found once) and the features' words together are the item's words.
    """
    excluded = _excluded_words(store) if store else STOPWORDS
    title_words = _words(title) - excluded
    if not features:
        return title_words, title_words
    return title_words.union(_words(" ".join(features)) - excluded), title_words


def short_title(title: str) -> str:
    """A title as the rationale quotes it: whole when short, else a prefix ending at a comma.

    Always a prefix of the real title, so the filter and the judge recognise it.
    """
    words = title.split()
    if len(words) <= MAX_TITLE_WORDS:
        return title.strip()
    cut = " ".join(words[:MAX_TITLE_WORDS])
    comma = cut.rfind(",")
    if comma >= len(" ".join(words[:4])):
        cut = cut[:comma]
    return cut.rstrip(",;:- ")


@dataclass(frozen=True)
class Link:
    """What one history item shares with the target."""

    item: ItemFacts
    position: int
    shared_category: str | None
    category_depth: int
    same_store: bool
    shared_keywords: tuple[str, ...]
    same_price_band: bool
    liked: bool

    @property
    def score(self) -> float:
        return (
            CATEGORY_WEIGHT * self.category_depth
            + (STORE_WEIGHT if self.same_store else 0.0)
            + KEYWORD_WEIGHT * min(len(self.shared_keywords), 3)
            + (PRICE_WEIGHT if self.same_price_band else 0.0)
        )


def _join(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


@functools.lru_cache(maxsize=1 << 16)
def _common_category_depth(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[int, str | None]:
    depth = 0
    for left, right in zip(a, b, strict=False):
        if left.lower() != right.lower():
            break
        depth += 1
    # The first level is the domain itself (every grocery item is "Grocery & Gourmet Food").
    return max(depth - 1, 0), (a[depth - 1] if depth >= 2 else None)


def find_links(context: ExampleContext) -> list[Link]:
    """Every history item's link to the target, strongest first (ties: most recent first)."""
    target = context.target
    target_words = keywords(target)
    target_band = price_band(target.price)
    links = []
    for position, item in enumerate(context.history):
        depth, category = _common_category_depth(item.categories, target.categories)
        same_store = bool(item.store and target.store and item.store.lower() == target.store.lower())
        # Title words say more than boilerplate feature words: they come first.
        title_shared = sorted(title_keywords(item) & title_keywords(target))
        shared = tuple(title_shared + sorted((keywords(item) & target_words) - set(title_shared)))
        links.append(
            Link(
                item=item,
                position=position,
                shared_category=category,
                category_depth=depth,
                same_store=same_store,
                shared_keywords=shared,
                same_price_band=target_band is not None and price_band(item.price) == target_band,
                liked=item.rating is not None and item.rating >= 4.0,
            )
        )
    return sorted(links, key=lambda link: (-link.score, -link.position))


_Derived = tuple[frozenset[str], frozenset[str], "str | None", "str | None", tuple[str, ...]]
"""An item's keywords, title keywords, lower-cased store, price band and lower-cased categories."""
Memo = dict[object, tuple[ItemFacts, _Derived]]
"""A worker's :func:`_derived` values by item id (see there)."""


@functools.lru_cache(maxsize=1 << 16)
def _lower_path(categories: tuple[str, ...]) -> tuple[str, ...]:
    # One lower-case tuple per category path (a catalog has a few thousand): shared by the
    # memo entries of all its items instead of one copy each.
    return tuple(sys.intern(c.lower()) for c in categories)


def _derived(item: ItemFacts, memo: Memo) -> _Derived:
    """What :func:`find_links` computes from one item alone, once per item of a batch.

    They depend on the title, store, price, categories and features only (not on the rating
    or the user). ``memo`` is keyed by the item's id (the facts of a worker's items are shared
    by its contexts: ``context._contexts_from_table``); each entry holds its item, so the id
    cannot be reused while the entry lives. Facts of one item with other ratings find the
    words in :func:`_item_words`'s cache, the costly part.
    """
    entry = memo.get(id(item))
    if entry is None:
        derived = (
            *_item_words(item.title, item.features, item.store or ""),
            item.store.lower() if item.store else None,
            price_band(item.price),
            _lower_path(item.categories),
        )
        entry = memo[id(item)] = (item, derived)
    return entry[1]


def supporting_links(context: ExampleContext, memo: Memo | None = None) -> list[Link]:
    """The links a rationale names: the first :data:`MAX_NAMED_ITEMS` of :func:`find_links`
    with a score of at least :data:`MIN_LINK_SCORE`, equal to filtering that list.

    Faster: every item's words, store, band and categories come from ``memo`` (shared by the
    contexts of a batch), a score is computed without building its :class:`Link`, and only the
    named links are built.
    """
    memo = {} if memo is None else memo
    return _supporting(context, [_derived(item, memo) for item in context.history], _derived(context.target, memo))


def _supporting(context: ExampleContext, derived: list[_Derived], target_derived: _Derived) -> list[Link]:
    """:func:`supporting_links` from the history's and the target's :func:`_derived` values."""
    t_words, t_title, t_store, t_band, t_lower = target_derived
    ranked = []
    for position, (words, _, store, band, lower) in enumerate(derived):
        depth = 0
        for left, right in zip(lower, t_lower, strict=False):  # the common prefix, as in _common_category_depth
            if left != right:
                break
            depth += 1
        # An item's title words are among its words (_item_words), so the shared title words and
        # the other shared words of find_links are together the shared words. The terms are
        # halves and whole numbers: the sum is exact in any order.
        score = CATEGORY_WEIGHT * (depth - 1 if depth > 1 else 0) + KEYWORD_WEIGHT * min(len(words & t_words), 3)
        if store is not None and store == t_store:
            score += STORE_WEIGHT
        if band is not None and band == t_band:
            score += PRICE_WEIGHT
        if score >= MIN_LINK_SCORE:
            ranked.append((-score, -position, depth))  # positions differ: the depth never decides
    ranked.sort()
    links = []
    for _, negative_position, depth in ranked[:MAX_NAMED_ITEMS]:
        position = -negative_position
        item = context.history[position]
        words, title, store, band, _ = derived[position]
        title_shared = title & t_title
        links.append(
            Link(
                item=item,
                position=position,
                shared_category=item.categories[depth - 1] if depth >= 2 else None,
                category_depth=depth - 1 if depth > 1 else 0,
                same_store=store is not None and store == t_store,
                shared_keywords=(*sorted(title_shared), *sorted((words & t_words) - title_shared)),
                same_price_band=band is not None and band == t_band,
                liked=item.rating is not None and item.rating >= 4.0,
            )
        )
    return links


def _choice(options: tuple[str, ...], digest: bytes, slot: int) -> str:
    return options[digest[slot] % len(options)]


OPENERS = (
    "The shopper's history shows a clear pattern.",
    "Several earlier purchases point the same way.",
    "What this shopper bought before tells a consistent story.",
    "The purchase history has a few strong threads.",
)
GROUP_SENTENCES = (
    "{items} {verb_come} from {store}{category_clause}.",
    "The shopper returned to {store} for {items}{category_clause}.",
    "{items} {verb_show} a steady habit of buying from {store}{category_clause}.",
)
CATEGORY_SENTENCES = (
    "{items} {verb_sit} in the {category} category.",
    "With {items}, the shopper was already buying {category}.",
    "{items} already {verb_show} an interest in {category}.",
)
KEYWORD_SENTENCES = (
    "{item} stands out, described by {words}.",
    "{item} is the closest thread, with {words}.",
    "{item} is marked by {words}.",
)
PRICE_SENTENCES = (
    "These purchases sit in the shopper's usual range ({band}).",
    "The shopper usually spends {band} on such items.",
)
LIKED_SENTENCES = (
    "The shopper rated {item} {rating:g} out of 5, so more of the same is welcome.",
    "A {rating:g}-star rating for {item} shows this line of products satisfied them.",
    "They gave {item} {rating:g} stars, a sign they would return to similar items.",
)
CLOSERS = (
    "An item that continues these threads is the natural next purchase, and {target} does: {link}.",
    "Following this history to its next step leads to {target}, since {link}.",
    "So the shopper went on to buy {target}: {link}.",
    "This is why {target} is a plausible next purchase: {link}.",
)


def _link_clause(supporting: list[Link]) -> str:
    """What the target shares with the history, said without naming either (the closer's reason)."""
    shared = []
    if any(link.same_store for link in supporting):
        shared.append("the same store")
    category = next((link.shared_category for link in supporting if link.shared_category), None)
    if category:
        shared.append(f"the {category} category")
    words = next((link.shared_keywords for link in supporting if link.shared_keywords), ())
    if words:
        shared.append("the words " + " and ".join(f"'{w}'" for w in words[:2]))
    if any(link.same_price_band for link in supporting):
        shared.append("the same price range")
    return f"it shares {_join(shared)} with these purchases" if shared else "it extends what these purchases show"


@functools.lru_cache(maxsize=1 << 14)
def _quote(title: str) -> str:
    # Cached: popular items are quoted in many rationales (a title is its own key).
    return f'"{short_title(title)}"'


_SINGULAR_VERBS = {"verb_come": "comes", "verb_show": "shows", "verb_sit": "sits", "verb_belong": "belongs"}
_PLURAL_VERBS = {"verb_come": "come", "verb_show": "show", "verb_sit": "sit", "verb_belong": "belong"}


def _verbs(count: int) -> dict[str, str]:
    return _PLURAL_VERBS if count > 1 else _SINGULAR_VERBS


def user_preferences(context: ExampleContext) -> str:
    """A one-sentence summary of the tastes the history shows."""
    categories = Counter(item.categories[-1] for item in context.history if item.categories)
    stores = Counter(item.store for item in context.history if item.store)
    ratings = [item.rating for item in context.history if item.rating is not None]
    bands = Counter(b for b in (price_band(item.price) for item in context.history) if b)
    return preferences_sentence(
        [c for c, _ in categories.most_common(2)],
        stores.most_common(1)[0] if stores else None,
        bands.most_common(1)[0][0] if bands else None,
        sum(ratings) / len(ratings) if ratings else None,
    )


def _top(counts: dict[str, int]) -> tuple[str, int] | None:
    """``Counter(counts).most_common(1)[0]``: the first of the most counted (None when empty)."""
    return max(counts.items(), key=_count) if counts else None


_count = operator.itemgetter(1)
"""The count of a ``(value, count)`` entry."""


def _fast_preferences(history: tuple[ItemFacts, ...], derived: list[_Derived]) -> str:
    """:func:`user_preferences` in one pass, the price bands taken from :func:`_derived`."""
    categories: dict[str, int] = {}
    stores: dict[str, int] = {}
    bands: dict[str, int] = {}
    ratings = []
    for item, entry in zip(history, derived, strict=True):
        if item.categories:
            last = item.categories[-1]
            categories[last] = categories.get(last, 0) + 1
        if item.store:
            stores[item.store] = stores.get(item.store, 0) + 1
        if item.rating is not None:
            ratings.append(item.rating)
        if band := entry[3]:
            bands[band] = bands.get(band, 0) + 1
    # Counter.most_common(n) is sorted(..., reverse=True)[:n], which keeps first-seen order in ties.
    top_categories = [c for c, _ in sorted(categories.items(), key=_count, reverse=True)[:2]]
    top_band = _top(bands)
    return preferences_sentence(
        top_categories, _top(stores), top_band[0] if top_band else None, sum(ratings) / len(ratings) if ratings else None
    )


def preferences_sentence(categories: list[str], top_store: tuple[str, int] | None, band: str | None, mean_rating: float | None) -> str:
    """:func:`user_preferences` from the history's two most counted last categories (most first;
    ties: first seen), its most counted store and price band (ties: first seen), with the store's
    count, and its mean rating (None: no rating)."""
    parts = []
    if categories:
        parts.append("mostly buys " + _join(categories))
    if top_store is not None and top_store[1] > 1:
        parts.append(f"returns to {top_store[0]}")
    if band:
        parts.append(f"usually spends {band}")
    if mean_rating is not None:
        parts.append(f"rates purchases {mean_rating:.1f} out of 5 on average")
    if not parts:
        return "The history gives little signal about preferences."
    return "The shopper " + _join(parts) + "."


def _evidence_sentences(supporting: list[Link], target_band: str | None, digest: bytes) -> list[str]:
    sentences = []
    by_store = [link for link in supporting if link.same_store]
    by_category = [link for link in supporting if link.shared_category and not link.same_store]
    if by_store:
        category = by_store[0].shared_category
        clause = f", in the {category} category" if category else ""
        names = _join([_quote(link.item.title) for link in by_store])
        sentences.append(
            _choice(GROUP_SENTENCES, digest, 1).format(
                items=names, store=by_store[0].item.store, category_clause=clause, **_verbs(len(by_store))
            )
        )
    if by_category:
        names = _join([_quote(link.item.title) for link in by_category])
        sentences.append(
            _choice(CATEGORY_SENTENCES, digest, 2).format(items=names, category=by_category[0].shared_category, **_verbs(len(by_category)))
        )
    closest = max(supporting, key=lambda link: (len(link.shared_keywords), link.position))
    if closest.shared_keywords:
        words = _join([f"'{w}'" for w in closest.shared_keywords[:3]])
        sentences.append(_choice(KEYWORD_SENTENCES, digest, 3).format(item=_quote(closest.item.title), words=words))
    if any(link.same_price_band for link in supporting):
        sentences.append(_choice(PRICE_SENTENCES, digest, 4).format(band=target_band))
    liked = next((link for link in supporting if link.liked), None)
    if liked is not None:
        sentences.append(_choice(LIKED_SENTENCES, digest, 5).format(item=_quote(liked.item.title), rating=liked.item.rating))
    return sentences


def annotate_many(contexts: list[ExampleContext], seed: int) -> list[TeacherAnswer]:
    """The template annotations of many examples, equal to :func:`annotate` of each.

    The items' words, stores, bands and categories are worked out once per item and kept by
    the worker process for the next batches (bounded by :data:`MAX_MEMO_ITEMS`): the contexts
    of a worker share their items' facts (``context._contexts_from_table``), which key the memo.
    """
    if len(_worker_memo) > MAX_MEMO_ITEMS:
        for key in list(itertools.islice(_worker_memo, len(_worker_memo) // 2)):
            _worker_memo.pop(key, None)
    return [annotate(context, seed, _worker_memo) for context in contexts]


_worker_memo: Memo = {}


def annotate(context: ExampleContext, seed: int, memo: Memo | None = None) -> TeacherAnswer:
    """The template annotation of one example (deterministic in (seed, user, target)).

    ``memo`` (see :func:`_derived`) may be shared by the examples of a batch; it never changes
    the answer.
    """
    memo = {} if memo is None else memo
    derived = [_derived(item, memo) for item in context.history]
    supporting = _supporting(context, derived, _derived(context.target, memo))
    return answer_from(context, seed, _fast_preferences(context.history, derived), supporting)


def answer_from(context: ExampleContext, seed: int, preferences: str, supporting: list[Link]) -> TeacherAnswer:
    """The answer for an example from its :func:`user_preferences` and :func:`supporting_links`."""
    target = context.target
    recent = [item.title for item in context.history[-2:]]
    rationale, reason = rationale_from(
        seed, context.user_id, target.parent_asin, target.title, price_band(target.price), recent, supporting
    )
    return TeacherAnswer(user_preferences=preferences, rationale=rationale, coherent=reason is None, incoherence_reason=reason)


def rationale_from(
    seed: int, user_id: str, target_asin: str, target_title: str, target_band: str | None, recent_titles: list[str], supporting: list[Link]
) -> tuple[str, str | None]:
    """The rationale of an example and, when nothing supports the target, the incoherence reason.

    ``recent_titles``: the titles of the history's last two items (oldest first; none for an
    empty history). The wording is chosen by a hash of (seed, user, target).
    """
    digest = hashlib.blake2b(f"{seed}|{user_id}|{target_asin}".encode(), digest_size=16).digest()
    target = _quote(target_title)
    if not supporting:
        recent = _join([_quote(title) for title in recent_titles]) or "no earlier purchase"
        reason = (
            "the target shares no category, store or title keywords with any history item"
            if recent_titles
            else "the shopper has no history to explain the target"
        )
        return f"The recent history ({recent}) shows no thread that leads on to {target}: {reason}.", reason.capitalize() + "."
    # Evidence first, the item last: the target's title is named in the closing sentence only.
    sentences = [
        _choice(OPENERS, digest, 0),
        *_evidence_sentences(supporting, target_band, digest),
        _choice(CLOSERS, digest, 6).format(target=target, link=_link_clause(supporting)),
    ]
    return " ".join([s[0].upper() + s[1:] for s in sentences]), None
