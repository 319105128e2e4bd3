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
    r"|(?:^|\n)\s*#{0,4}\s*(?:system|assistant|user|instruction)\s*:",
    re.IGNORECASE,
)
_WHITESPACE_RUN = re.compile(r"\S+")


def _longest_word(text: str) -> int:
    return max((len(word) for word in _WHITESPACE_RUN.findall(text)), default=0)


def hostile_text_reason(text: str | None, *, max_chars: int = MAX_CHARS, max_word_chars: int = MAX_WORD_CHARS) -> str | None:
    """The first hostile-text rule ``text`` breaks (see the module docstring), or None.

    ``None`` and empty text break none (emptiness is the caller's rule). The returned code is
    registered in ``core/reasons.py`` for stage ``filter``.
    """
    if not text:
        return None
    if len(text) > max_chars:
        return "too_many_characters"
    if _longest_word(text) > max_word_chars:
        return "overlong_word"
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
