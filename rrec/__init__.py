"""The top layer: the ``rrec`` command line and ``rrec run``, the whole chain.

Everything else sits below: ``core`` (the base), the stages of ``pipeline``, then
``validation``, ``datacards`` and ``release``; ``training`` and ``reproduce`` beside them.
"""
