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

import re
import unicodedata

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
