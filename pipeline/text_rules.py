"""Rules for hostile text in model answers: one function shared by the filter and the judge.

An annotator's rationale and user preferences, and a judge's explanation, are text a model
wrote from data we do not control (review titles, product titles). They reach released
training rows, so text that could act as markup, script or an instruction to the next model
that reads it is rejected with its own registered reason (``core/reasons.py``, stage
``filter``), checked in this order:

``too_many_characters``  longer than ``max_chars`` characters (a 10 MB answer; checked first
                         so no other rule scans a huge text)
``overlong_word``        a run of more than ``max_word_chars`` characters without whitespace
                         (encoded blobs, padding; word counts alone miss it)
``control_characters``   C0/C1 control characters other than tab, newline, carriage return
``invisible_characters`` zero-width, bidirectional-override, Unicode tag characters
``event_handler``        an HTML event-handler attribute (``onerror=``) or a ``javascript:`` URI
``script``               ``<script``, ``</script>`` or script APIs (``document.cookie``, ``eval(``)
``markup``               an HTML/XML tag, comment, doctype or escaped tag (``&lt;b&gt;``)
``prompt_injection``     a phrase addressed to a model ("ignore all previous instructions",
                         "you are now", "system prompt", chat-template tokens)

Patterns are matched on the NFKC form of the text, so full-width look-alikes (``＜script＞``)
count as what they look like. Benign prose passes: ``4 < 5 stars``, a product named
"Script Pens", "ignore" in a normal sentence.
"""

from __future__ import annotations

import functools
import re
import unicodedata

from pipeline.teacher_prompt import ExampleContext, ItemFacts

MAX_CHARS = 4000
"""Default character ceiling: ``max_words`` (400) words of ten characters each."""
MAX_WORD_CHARS = 100
"""Default longest run of non-whitespace characters."""

HOSTILE_REASONS = (
    "too_many_characters",
    "overlong_word",
    "control_characters",
    "invisible_characters",
    "event_handler",
    "script",
    "markup",
    "prompt_injection",
)

CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\U000e0000-\U000e007f\U000e0100-\U000e01ef]")
SCRIPT = re.compile(
    r"<\s*/?\s*script\b|\bdocument\s*\.\s*(?:cookie|write|location|domain)\b|\bwindow\s*\.\s*location\b"
    r"|\beval\s*\(|\bfromcharcode\s*\(|\balert\s*\(\s*(?:document|window|\d|['\"`])",
    re.IGNORECASE,
)
EVENT_HANDLER = re.compile(
    r"\bon[a-z]{3,24}\s*=\s*(?:[\"'`]|[a-z_$][\w$.]*\s*\()|\b(?:j\s*a\s*v\s*a|v\s*b)\s*s\s*c\s*r\s*i\s*p\s*t\s*:|\bdata\s*:\s*text/html",
    re.IGNORECASE,
)
_TAGS = (
    "a|abbr|applet|area|article|aside|audio|b|base|basefont|bgsound|big|blink|blockquote|body|br|button|canvas|center|code|"
    "col|dd|details|dialog|div|dl|dt|em|embed|fieldset|figure|font|footer|form|frame|frameset|h[1-6]|head|header|hr|html|"
    "i|iframe|ilayer|image|img|input|isindex|kbd|keygen|label|layer|li|link|listing|main|map|mark|marquee|math|menu|meta|"
    "meter|nav|nobr|noembed|noframes|noscript|object|ol|option|p|param|plaintext|portal|pre|progress|q|s|section|select|"
    "small|source|span|strike|strong|style|sub|summary|sup|svg|table|tbody|td|template|textarea|tfoot|th|thead|title|tr|"
    "track|tt|u|ul|var|video|wbr|xmp|xss"
)
MARKUP = re.compile(
    rf"<\s*/?\s*(?:{_TAGS})(?:\s[^<>]*)?/?\s*>"  # a known element, opening or closing
    rf"|<\s*(?:{_TAGS})\s+[\w:-]+\s*="  # a known element with an attribute (unclosed)
    r"|<[a-z][\w:-]*(?:\s+[\w:-]+\s*=\s*(?:\"[^\"<>]*\"|'[^'<>]*'))+\s*/?\s*>"  # any element with quoted attributes
    r"|</[a-z][\w:-]*\s*>|<!--|<!\s*doctype|<!\[cdata\[|<\?xml"
    r"|&(?:lt|#0*60|#x0*3c);\s*/?\s*[a-z!]",  # an escaped tag
    re.IGNORECASE,
)
PROMPT_INJECTION = re.compile(
    r"\b(?:ignore|disregard|forget|override|bypass|skip)\s+(?:all\s+|any\s+|every\s+)?(?:of\s+)?(?:the\s+|your\s+|my\s+|these\s+|those\s+)?"
    r"(?:previous|prior|preceding|above|earlier|former|original|initial|system|safety)\s+"
    r"(?:instructions?|prompts?|messages?|rules|directions|guidelines|context|constraints)"
    r"|\bforget\s+(?:everything|all)\s+(?:you|above|before)"
    r"|\byou\s+are\s+now\b(?!\s+able\b)"
    r"|\bfrom\s+now\s+on\s*,?\s+(?:you|ignore|respond|answer|act)\b"
    r"|\bsystem\s+prompt|\bsystem\s+message|\bdeveloper\s+(?:message|mode)|\bjailbr[eo]a?k|\bdo\s+anything\s+now\b"
    r"|\b(?:new|updated|real|actual|hidden)\s+instructions\s*:"
    r"|\b(?:reveal|print|repeat|show)\s+(?:me\s+)?(?:your|the)\s+(?:hidden\s+|initial\s+|original\s+)?(?:instructions|prompt)"
    r"|\bpretend\s+(?:to\s+be|you\s+are)\b|\bact\s+as\s+(?:an?\s+)?(?:unrestricted|unfiltered|evil|different)\b"
    r"|<\|[a-z_]+\|>|\[/?(?:inst|sys|system)\]|<<\s*sys\s*>>"
    r"|(?:^|\n)\s*#{0,4}\s*(?:system|assistant|instruction)\s*:",  # not "User:": preferences may start so
    re.IGNORECASE,
)

# Pre-screens in RE2 syntax (pyarrow.compute, one call per column). For an ASCII text each is a
# superset of its rules: no match proves the rules cannot fire, so a row can skip them. A
# non-ASCII text is always checked in full (Unicode case folding, NFKC, Unicode \s and \d).
_WS = r"[\t-\r\x1c-\x20]"  # what Python's \s matches among ASCII characters
MAY_BE_HOSTILE_RE2 = "(?i)" + "|".join(
    [
        r"[<\[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|&(?:lt|#0*60|#x0*3c);",  # tags, chat tokens, controls, escaped tags
        rf"on[a-z]{{3,24}}{_WS}*=|s{_WS}*c{_WS}*r{_WS}*i{_WS}*p{_WS}*t{_WS}*:|data{_WS}*:{_WS}*text/html",  # EVENT_HANDLER
        rf"(?:document|window){_WS}*\.|(?:eval|fromcharcode|alert){_WS}*\(",  # SCRIPT without a tag
        rf"(?:ignore|disregard|forget|override|bypass|skip){_WS}|you{_WS}+are{_WS}+now|from{_WS}+now{_WS}+on",
        rf"system{_WS}+(?:prompt|message)|developer{_WS}+(?:message|mode)|jailbr|do{_WS}+anything{_WS}+now",
        rf"instructions{_WS}*:|(?:reveal|print|repeat|show){_WS}+(?:me{_WS}+)?(?:your|the){_WS}",
        rf"pretend{_WS}+(?:to|you){_WS}|act{_WS}+as{_WS}|(?:system|assistant|user|instruction){_WS}*:",
    ]
)
MAY_REFUSE_RE2 = r"(?i)sorry|apologi|cannot|can't|unable|won'?t|as an ai|must decline"
MAY_HOLD_EMAIL_RE2 = "@"
MAY_HOLD_URL_RE2 = r"(?i)https?://|www\.|\.(?:com|net|org|io|co|us|uk|de|info|biz)"
MAY_HOLD_PHONE_RE2 = rf"[0-9]{{3}}(?:{_WS}|[.-])[0-9]{{4}}"
_NOT_WS = f"[^{_WS[1:]}"  # a character of a word as Python's str.split() finds words in ASCII text
MAX_RE2_REPEAT = 1000
"""RE2 rejects a counted repetition above this (its default ``max_repeat``)."""


def may_hold_long_word_re2(max_word_chars: int) -> str | None:
    """The RE2 pre-screen of the ``overlong_word`` rule (exact for an ASCII text), or None when
    ``max_word_chars`` is beyond a counted repetition of RE2 (then every text is checked)."""
    if max_word_chars + 1 > MAX_RE2_REPEAT:
        return None
    return f"{_NOT_WS}{{{max_word_chars + 1},}}"


def has_words_re2(count: int) -> str | None:
    """RE2 that matches an ASCII text of at least ``count`` (1 or more) words as ``str.split()``
    finds them, reading only those words; None when ``count`` is beyond a counted repetition."""
    if count - 1 > MAX_RE2_REPEAT:
        return None
    return f"^{_WS}*(?:{_NOT_WS}+{_WS}+){{{count - 1}}}{_NOT_WS}"


def _longest_word(text: str) -> int:
    return max(map(len, text.split()), default=0)


def hostile_text_reason(
    text: str | None,
    *,
    max_chars: int = MAX_CHARS,
    max_word_chars: int = MAX_WORD_CHARS,
    patterns: bool = True,
    word_lengths: bool = True,
) -> str | None:
    """The first hostile-text rule ``text`` breaks (see the module docstring), or None.

    ``None`` and empty text break none (emptiness is the caller's rule). The returned code is
    registered in ``core/reasons.py`` for stage ``filter``. ``patterns=False`` skips the
    character and pattern rules: only for a text that :data:`MAY_BE_HOSTILE_RE2` proved clean;
    ``word_lengths=False`` skips ``overlong_word``: only for a text that
    :func:`may_hold_long_word_re2` proved clean.
    """
    if not text:
        return None
    if len(text) > max_chars:
        return "too_many_characters"
    if word_lengths and _longest_word(text) > max_word_chars:
        return "overlong_word"
    if not patterns:
        return None
    if CONTROL.search(text):
        return "control_characters"
    if INVISIBLE.search(text):
        return "invisible_characters"
    folded = text if text.isascii() else unicodedata.normalize("NFKC", text)
    if EVENT_HANDLER.search(folded):
        return "event_handler"
    if SCRIPT.search(folded):
        return "script"
    if MARKUP.search(folded):
        return "markup"
    if PROMPT_INJECTION.search(folded):
        return "prompt_injection"
    return None


def hostile_answer_reason(*texts: str | None, max_chars: int = MAX_CHARS, max_word_chars: int = MAX_WORD_CHARS) -> str | None:
    """The first hostile-text reason among several fields of one answer, or None."""
    for text in texts:
        reason = hostile_text_reason(text, max_chars=max_chars, max_word_chars=max_word_chars)
        if reason is not None:
            return reason
    return None


# -- grounding rules: the text against the example's history and target -----------------------

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


# -- the grounding rules for a whole partition: the same answers, each fact computed once ------

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
