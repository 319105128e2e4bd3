"""The reference grounding and content rules: a rationale against its example's history and target.

Refusals, links, e-mail addresses and phone numbers, English prose, quoted product names that
match a history or target title, and whether the text names the target before any history
evidence. Per row and plain: :mod:`pipeline.text_rules.partition` gives the same answers for a
whole partition, each fact computed once, and tests pin one to the other.
"""

from __future__ import annotations

import functools
import re

from pipeline.teacher_prompt import ExampleContext, ItemFacts

REFUSAL = re.compile(
    r"\b(?:i'?m sorry|i am sorry|i apologi[sz]e|i (?:can(?:no|')t|am unable to|'m unable to|won'?t) "
    r"(?:help|assist|provide|comply|do that|fulfil)|as an ai\b|i must decline)",
    re.IGNORECASE,
)
URL = re.compile(r"(?:https?://|www\.)\S+|\b[a-z0-9-]+\.(?:com|net|org|io|co|us|uk|de|info|biz)\b(?:/\S*)?", re.IGNORECASE)
EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b")
PHONE = re.compile(r"(?<![\w$.])(?:\+?\d{1,3}[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}(?![\w.])")
QUOTED = re.compile(r"[\"“”]([^\"“”]{3,200})[\"“”]")
LETTERS = re.compile(r"[^\W\d_]+")
NORMALISE = re.compile(r"[^a-z0-9]+")
ENGLISH_FUNCTION_WORDS = frozenset(
    [
        "the",
        "a",
        "an",
        "and",
        "or",
        "but",
        "of",
        "to",
        "in",
        "on",
        "at",
        "for",
        "with",
        "from",
        "by",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "they",
        "them",
        "their",
        "he",
        "she",
        "his",
        "her",
        "so",
        "both",
        "also",
        "than",
        "more",
        "most",
        "same",
        "which",
        "who",
        "has",
        "have",
        "had",
        "not",
        "no",
        "can",
        "will",
        "would",
        "should",
        "could",
        "into",
        "like",
        "because",
        "since",
        "while",
        "then",
        "there",
        "here",
        "all",
        "any",
        "each",
        "other",
        "such",
        "only",
        "very",
        "just",
        "before",
        "after",
    ]
)


_ASCII_FOLD = bytes(
    (c | 0x20) if chr(c).isascii() and chr(c).isalnum() else 0x20 for c in range(256)
)  # ASCII letters to lower case, digits kept, every other byte a space


def normalise(text: str) -> str:
    """Lower-case letters and digits, every other run of characters one space."""
    if text.isascii():  # the same string, by a byte translation instead of the regex
        return " ".join(text.encode("ascii").translate(_ASCII_FOLD).decode("ascii").split())
    return NORMALISE.sub(" ", text.lower()).strip()


def normal_words(text: str) -> list[str]:
    """``normalise(text).split()``, without joining the words first for an ASCII text."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_FOLD).decode("ascii").split()
    return NORMALISE.sub(" ", text.lower()).split()


def normalise_padded(text: str) -> str:
    """``f" {NORMALISE.sub(' ', text.lower())} "``: the normal form, not stripped, between spaces."""
    if not text.isascii():
        return f" {NORMALISE.sub(' ', text.lower())} "
    folded = text.encode("ascii").translate(_ASCII_FOLD).decode("ascii")
    core = " ".join(folded.split())
    if not core:
        return "   " if folded else "  "
    return f"{'  ' if folded[0] == ' ' else ' '}{core}{'  ' if folded[-1] == ' ' else ' '}"


@functools.lru_cache(maxsize=1 << 16)
def _phrase(text: str) -> str:
    """:func:`normalise` of a short text that recurs (a quoted mention, a store, a category)."""
    return normalise(text)


@functools.lru_cache(maxsize=1 << 16)
def title_facts(title: str) -> tuple[str, frozenset[str], str]:
    """A title's normal form, its word set and its lead (first four words); cached per title."""
    words = normal_words(title)
    return " ".join(words), frozenset(words), " ".join(words[:4])


@functools.lru_cache(maxsize=1 << 16)
def _overlap(mention_norm: str, title: str) -> float:
    """How well a quoted (normalised, non-empty) mention names ``title``: 1.0 for a substring
    match, else the share of the mention's words in the title. Cached: the same mentions and
    titles recur across a user's examples and across users of popular items."""
    title_norm, title_words, _ = title_facts(title)
    if not title_norm:
        return 0.0
    if mention_norm in title_norm or (len(title_norm) >= 8 and title_norm in mention_norm):
        return 1.0
    mention_words = set(mention_norm.split())
    return len(mention_words & title_words) / len(mention_words)


def matches_title(mention: str, titles: list[str], min_overlap: float) -> bool:
    """Whether a quoted mention names one of ``titles`` (prefix, substring or word overlap)."""
    mention_norm = _phrase(mention)
    if not mention_norm:
        return True
    return any(_overlap(mention_norm, title) >= min_overlap for title in titles)


def quoted_mentions(text: str) -> list[tuple[int, str]]:
    """The quoted mentions of ``text`` (:data:`QUOTED`), in order: where each opening quote is and
    what it quotes. An ASCII text (``"`` its only quote) is read by ``str.find``, not the regex."""
    if not text.isascii():
        return [(match.start(), match.group(1)) for match in QUOTED.finditer(text)]
    mentions = []
    start = text.find('"')
    while start >= 0:
        end = text.find('"', start + 1)
        if end < 0:
            break
        if 3 <= end - start - 1 <= 200:
            mentions.append((start, text[start + 1 : end]))
            start = text.find('"', end + 1)
        else:
            start = end  # no mention opens here, but the next quote may open one
    return mentions


def _outside_quotes(text: str) -> str:
    """``QUOTED.sub(" ", text)``: each quoted mention (quotes included) replaced by one space."""
    if not text.isascii():
        return QUOTED.sub(" ", text)
    pieces, end = [], 0
    for start, mention in quoted_mentions(text):
        pieces.append(text[end:start])
        end = start + len(mention) + 2
    pieces.append(text[end:])
    return " ".join(pieces)


def is_english(text: str, min_function_word_ratio: float, max_non_ascii_letter_ratio: float) -> bool:
    """Latin script and enough English function words outside quoted titles."""
    prose = _outside_quotes(text)
    if not prose.isascii():
        letters = "".join(LETTERS.findall(prose))
        if letters and sum(not ch.isascii() for ch in letters) / len(letters) > max_non_ascii_letter_ratio:
            return False
    words = normal_words(prose)
    if len(words) < 8:
        return True  # too little prose to judge; length rules handle very short texts
    return sum(map(ENGLISH_FUNCTION_WORDS.__contains__, words)) / len(words) >= min_function_word_ratio


def _attributes(item: ItemFacts) -> list[str]:
    return [a for a in (item.store or "", *item.categories[1:]) if len(a) >= 3]


def is_grounded(rationale: str, context: ExampleContext, min_overlap: float) -> bool:
    """Names a history item (quoted or by its first words) or a history store/category."""
    history_titles = [item.title for item in context.history if item.title]
    if any(matches_title(m, history_titles, min_overlap) for m in QUOTED.findall(rationale)):
        return True
    text = f" {normalise(rationale)} "
    for item in context.history:
        lead = title_facts(item.title)[2]
        if len(lead) >= 8 and f" {lead} " in text:
            return True
        if any(f" {_phrase(a)} " in text for a in _attributes(item)):
            return True
    return False


_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def norm_positions(text: str, indices: list[int]) -> list[int]:
    """Where ``text[i]`` falls in ``f" {NORMALISE.sub(' ', text.lower())} "`` for ascending ``indices``.

    The position equals ``len(NORMALISE.sub(" ", text[:i].lower()))`` (a phrase found in the
    padded form starts at its leading space), computed in one pass over the text: a run of
    separators cut by an index is one space, counted in the segment where it starts.
    """
    low = text.lower()
    if len(low) != len(text):  # a letter whose lower case is longer: prefix by prefix
        return [len(NORMALISE.sub(" ", text[:i].lower())) for i in indices]
    positions, total, previous = [], 0, 0
    for index in indices:
        segment = NORMALISE.sub(" ", low[previous:index])
        total += len(segment)
        if segment.startswith(" ") and previous > 0 and low[previous - 1] not in _ALNUM:
            total -= 1
        positions.append(total)
        previous = index
    return positions


def names_target_first(rationale: str, context: ExampleContext, min_overlap: float) -> bool:
    """Whether the rationale names the target before any history item or history attribute.

    Positions are compared in the normalised text. A quoted mention counts for the target when
    it names the target better than every history item (a tie counts for the history); the
    target's lead (first four words) counts unless a history item has the same lead. Evidence
    is a quoted history item, a history item's lead, or a history store or category found
    outside the target's own mentions (a store inside the target's title is not evidence). A
    rationale that never names the target is not target-first.
    """
    padded = f" {NORMALISE.sub(' ', rationale.lower())} "
    history_titles = [item.title for item in context.history if item.title]
    target_spans: list[tuple[int, int]] = []
    evidence_at: list[int] = []
    matches = list(QUOTED.finditer(rationale))
    bounds = norm_positions(rationale, [i for match in matches for i in match.span()])
    for number, match in enumerate(matches):
        mention_norm = _phrase(match.group(1))
        if not mention_norm:
            continue
        target_score = _overlap(mention_norm, context.target.title)
        # At least as good for a history item: evidence (when it names one well enough at all).
        floor = target_score if target_score >= min_overlap else min_overlap
        if any(_overlap(mention_norm, title) >= floor for title in history_titles):
            evidence_at.append(bounds[2 * number])
        elif target_score >= min_overlap:
            target_spans.append((bounds[2 * number], bounds[2 * number + 1]))
    history_leads = {title_facts(t)[2] for t in history_titles}
    target_lead = title_facts(context.target.title)[2]
    if len(target_lead) >= 8 and target_lead not in history_leads and (found := padded.find(f" {target_lead} ")) >= 0:
        target_spans.append((found, found + len(target_lead) + 1))
    if not target_spans:
        return False
    first_target = min(start for start, _ in target_spans)
    phrases = {lead for lead in history_leads if len(lead) >= 8}
    phrases |= {_phrase(a) for item in context.history for a in _attributes(item)}
    for phrase in phrases:
        found = padded.find(f" {phrase} ")
        while found >= 0 and any(start <= found < end for start, end in target_spans):
            found = padded.find(f" {phrase} ", found + 1)
        if found >= 0:
            evidence_at.append(found)
    return first_target < min(evidence_at, default=len(padded))
