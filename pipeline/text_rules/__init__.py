"""Rules the filter (and, for hostile text, the judge) applies to text a model wrote.

- :mod:`~pipeline.text_rules.hostile`: hostile text (length, overlong words, control and
  invisible characters, event handlers, scripts, markup, phrases aimed at a model), with the
  RE2 pre-screens that let a partition skip the rows that cannot break them;
- :mod:`~pipeline.text_rules.grounding`: the per-row reference of the content and grounding
  rules (refusals, links and personal data, English prose, quoted product names against the
  history and the target, target named first);
- :mod:`~pipeline.text_rules.partition`: the same grounding answers for a whole partition, each
  fact computed once.

Import a rule from the submodule that owns it (``from pipeline.text_rules.hostile import ...``).
"""
