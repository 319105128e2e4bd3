"""The grounding rules for a whole partition: the answers of :mod:`pipeline.text_rules.grounding`,
each title's and attribute's facts computed once (:class:`GroundingMemo`), each quoted mention
scored once (:func:`grounding_reason`)."""

from __future__ import annotations

from pipeline.teacher_prompt import ExampleContext
from pipeline.text_rules.grounding import _attributes, _phrase, normalise_padded, quoted_mentions, title_facts

TitleFacts = tuple[str, frozenset[str], str]
"""A title's normal form, word set and lead (:func:`title_facts`)."""


class GroundingMemo:
    """Title and attribute facts memoised for one partition (bounded by its rows, then dropped).

    Titles missing here come from :func:`title_facts` (a bounded per-process cache).
    """

    def __init__(self) -> None:
        self._titles: dict[str, TitleFacts] = {}
        self._attributes: dict[tuple[str | None, tuple[str, ...]], tuple[str, ...]] = {}

    def title(self, title: str) -> TitleFacts:
        """:func:`title_facts` of ``title``."""
        facts = self._titles.get(title)
        if facts is None:
            facts = self._titles[title] = title_facts(title)
        return facts

    def history(self, context: ExampleContext) -> list[TitleFacts]:
        """The facts of the example's history titles (those not empty), oldest first.

        They come straight from :func:`title_facts`: most history items of a partition are new to it.
        """
        return [title_facts(item.title) for item in context.history if item.title]

    def phrases(self, context: ExampleContext, history: list[TitleFacts]) -> set[str]:
        """The evidence phrases between spaces (``" phrase "``, as found in a padded normal form):
        history leads of 8+ characters, history stores and categories."""
        phrases = {f" {lead} " for _, _, lead in history if len(lead) >= 8}
        attributes = self._attributes
        for item in context.history:
            key = (item.store, item.categories)
            found = attributes.get(key)
            if found is None:
                found = attributes[key] = tuple(f" {_phrase(a)} " for a in _attributes(item))
            phrases.update(found)
        return phrases


def _mention_scores(
    mention_norm: str,
    words: frozenset[str],
    history: list[TitleFacts],
    history_text: str,
    target: TitleFacts,
    min_overlap: float,
    grounded: bool,
) -> tuple[float, float]:
    """(best :func:`_overlap` with a history title, :func:`_overlap` with the target) of a non-empty
    mention (its normal form and word set), exact as far as :func:`grounding_reason` compares them:

    - a mention inside a history title (``history_text``: their normal forms, one a line) scores
      1.0 there, the most, and the target's score cannot matter: 0.0;
    - a mention that names the target once the rationale is ``grounded`` is history evidence when
      a history title names it at least as well: that scores 1.0, else 0.0.
    """
    if mention_norm in history_text:
        return 1.0, 0.0
    target_score = _target_score(mention_norm, words, target)
    if grounded and target_score >= min_overlap:
        return (1.0 if _named_as_well(mention_norm, words, history, target_score) else 0.0), target_score
    return _history_score(mention_norm, words, history), target_score


def _history_score(mention_norm: str, words: frozenset[str], history: list[TitleFacts]) -> float:
    """The best :func:`_overlap` of a mention inside no history title with one of them."""
    best, size = 0.0, len(words)
    for title_norm, title_words, _ in history:
        if len(title_norm) >= 8 and title_norm in mention_norm:
            return 1.0
        score = len(words & title_words) / size
        if score > best:
            best = score
    return best


def _named_as_well(mention_norm: str, words: frozenset[str], history: list[TitleFacts], score: float) -> bool:
    """Whether :func:`_history_score` reaches ``score`` (a subset test instead of intersections for 1.0)."""
    size = len(words)
    for title_norm, title_words, _ in history:
        if len(title_norm) >= 8 and title_norm in mention_norm:
            return True
        if words <= title_words or (score < 1.0 and len(words & title_words) / size >= score):
            return True
    return False


def _target_score(mention_norm: str, words: frozenset[str], target: TitleFacts) -> float:
    """:func:`_overlap` of a non-empty mention (its normal form and word set) with the target title."""
    target_norm, target_words, _ = target
    if not target_norm:
        return 0.0
    if mention_norm in target_norm or (len(target_norm) >= 8 and target_norm in mention_norm):
        return 1.0
    return len(words & target_words) / len(words)


def grounding_reason(rationale: str, context: ExampleContext, memo: GroundingMemo, min_overlap: float) -> str | None:
    """``unknown_product``, ``not_grounded``, ``target_first`` or None: the answer of the
    reference rules (:func:`matches_title` over the quoted mentions, :func:`is_grounded`,
    :func:`names_target_first`), with each distinct mention scored once against the titles."""
    mentions = quoted_mentions(rationale)
    history = memo.history(context)
    target = memo.title(context.target.title)
    history_text = "\n".join([norm for norm, _, _ in history]) if mentions else ""
    scores: dict[str, tuple[float, float]] = {}
    targets: list[int] = []  # match numbers of the quoted target mentions
    evidence: list[int] = []  # and of the quoted history items
    quoted_ground = False
    for number, (_, mention) in enumerate(mentions):
        # A mention's normal form and words are those of a title (most mentions are titles: cached).
        mention_norm, words, _ = title_facts(mention)
        if not mention_norm:
            quoted_ground = True  # matches_title: an empty mention names every list
            continue
        pair = scores.get(mention_norm)
        if pair is None:  # (a later quote of it finds the rationale grounded too: the same answers)
            pair = scores[mention_norm] = _mention_scores(mention_norm, words, history, history_text, target, min_overlap, quoted_ground)
        history_score, target_score = pair
        if history_score < min_overlap and target_score < min_overlap:
            return "unknown_product"
        quoted_ground = quoted_ground or history_score >= min_overlap
        if history_score >= max(target_score, min_overlap):
            evidence.append(number)
        elif target_score >= min_overlap:
            targets.append(number)
    lead = target[2]
    if evidence and (not targets or evidence[0] < targets[0]) and rationale.isascii():
        # A quoted history item comes before every quoted target, so only the target's lead can
        # name the target first, and only where it starts before that quote (see _first_target):
        # the text after the quote need not be normalised.
        if len(lead) < 8 or lead in [history_lead for _, _, history_lead in history]:
            return None
        if not _named_before(rationale, f" {lead} ", mentions[evidence[0]][0]):
            return None
    padded = normalise_padded(rationale)
    phrases: set[str] | None = None
    if not quoted_ground:
        phrases = memo.phrases(context, history)
        text = f" {padded.strip()} "
        if not any(phrase in text for phrase in phrases):
            return "not_grounded"
    lead_at = padded.find(f" {lead} ") if len(lead) >= 8 else -1
    if lead_at >= 0 and any(lead == history_lead for _, _, history_lead in history):
        lead_at = -1  # a lead the history shares names the history as much as the target
    first_target = _first_target(rationale, mentions, targets, evidence, lead_at)
    if first_target is None:
        return None
    if phrases is None:
        phrases = memo.phrases(context, history)
    end = first_target + 1
    # The phrases are padded: ``end + len(phrase) - 2`` is the reference bound ``end + len(bare phrase)``.
    return None if any(padded.find(phrase, 0, end + len(phrase) - 2) >= 0 for phrase in phrases) else "target_first"


def _norm_position(text: str, index: int) -> int:
    """Where ``text[index]`` falls in the padded normal form: ``len(NORMALISE.sub(' ', text[:index].lower()))``."""
    return len(normalise_padded(text[:index])) - 2


def _named_before(text: str, phrase: str, index: int) -> bool:
    """Whether ``phrase`` (between spaces) starts in the padded normal form of an ASCII ``text``
    before where ``text[index]`` falls, normalising little more of the text than that.

    The normal form of a prefix is a prefix of the whole one (each character maps alone), and a
    phrase that starts before ``position`` ends within ``position + len(phrase) - 1`` characters.
    """
    position = _norm_position(text, index)
    stop = index + 2 * len(phrase)
    head = normalise_padded(text[:stop])
    if stop < len(text) and len(head) - 2 < position + len(phrase) - 1:
        head = normalise_padded(text)  # separators collapsed: that prefix fell short
    return 0 <= head.find(phrase) < position


def _first_target(rationale: str, mentions: list[tuple[int, str]], targets: list[int], evidence: list[int], lead_at: int) -> int | None:
    """Where the target is first named in the padded normal form, or None when it is not named
    or a quoted history item comes first (at the same place or before).

    Quote starts keep their order in the normal form (each quote holds a letter or digit), so
    only the first quote of each kind is placed. Target spans start at ``first_target`` or later
    and are not empty: later evidence is a history phrase found before it (the caller's check).
    """
    if not targets and lead_at < 0:
        return None
    if targets and (not evidence or targets[0] < evidence[0]):
        quoted = _norm_position(rationale, mentions[targets[0]][0])
        return quoted if lead_at < 0 else min(quoted, lead_at)
    # Here the first history quote (if any) comes before every target quote: only the target's lead can precede it.
    if evidence and (lead_at < 0 or _norm_position(rationale, mentions[evidence[0]][0]) <= lead_at):
        return None
    return lead_at
