"""Annotators for the ``annotate`` stage: the offline template, OpenAI chat and the Batch API.

Shared machinery lives beside them: example contexts (``context``), the answer cache
(``cache``), run-wide rate and budget limits (``limits``) and token prices (``pricing``).
"""
