"""Rules the filter (and, for hostile text, the judge) applies to text a model wrote.

- :mod:`~pipeline.text_rules.hostile`: hostile text (length, overlong words, control and
  invisible characters, event handlers, scripts, markup, phrases aimed at a model), with the
  RE2 pre-screens that let a partition skip the rows that cannot break them;
- :mod:`~pipeline.text_rules.grounding`: the per-row reference of the content and grounding
  rules (refusals, links and personal data, English prose, quoted product names against the
  history and the target, target named first);
- :mod:`~pipeline.text_rules.partition`: the same grounding answers for a whole partition, each
  fact computed once.
"""

from pipeline.text_rules.grounding import (
    EMAIL,
    NORMALISE,
    PHONE,
    QUOTED,
    REFUSAL,
    URL,
    is_english,
    is_grounded,
    matches_title,
    names_target_first,
    norm_positions,
    normal_words,
    normalise,
    normalise_padded,
    quoted_mentions,
    title_facts,
)
from pipeline.text_rules.hostile import (
    HOSTILE_REASONS,
    MAX_CHARS,
    MAX_WORD_CHARS,
    MAY_BE_HOSTILE_RE2,
    MAY_HOLD_EMAIL_RE2,
    MAY_HOLD_PHONE_RE2,
    MAY_HOLD_URL_RE2,
    MAY_REFUSE_RE2,
    has_words_re2,
    hostile_answer_reason,
    hostile_text_reason,
    may_hold_long_word_re2,
)
from pipeline.text_rules.partition import GroundingMemo, grounding_reason

__all__ = [
    "EMAIL",
    "HOSTILE_REASONS",
    "MAX_CHARS",
    "MAX_WORD_CHARS",
    "MAY_BE_HOSTILE_RE2",
    "MAY_HOLD_EMAIL_RE2",
    "MAY_HOLD_PHONE_RE2",
    "MAY_HOLD_URL_RE2",
    "MAY_REFUSE_RE2",
    "NORMALISE",
    "PHONE",
    "QUOTED",
    "REFUSAL",
    "URL",
    "GroundingMemo",
    "grounding_reason",
    "has_words_re2",
    "hostile_answer_reason",
    "hostile_text_reason",
    "is_english",
    "is_grounded",
    "matches_title",
    "may_hold_long_word_re2",
    "names_target_first",
    "norm_positions",
    "normal_words",
    "normalise",
    "normalise_padded",
    "quoted_mentions",
    "title_facts",
]
