"""Great Expectations suites for the pipeline tables and the ``validate`` stage that runs them.

``runner`` (the stage, ``VALIDATE``), ``spec`` (tables, severities, suite JSON; no GX),
``suites`` / ``suite_builders`` (the GX suites), ``derived`` (columns derived from lists),
``row_checks`` (row checks, vectorised) and ``gx_checks`` (the same by GX), ``whole_table``
(table checks on Dask), ``summary`` (typed results), ``report`` (Data Docs), ``cli``.
"""

import logging

# GX logs plugin registration and datasource loading at INFO, on import and on every context;
# that is noise in rrec's log. An explicit level set by the user is left alone.
if logging.getLogger("great_expectations").level == logging.NOTSET:
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
