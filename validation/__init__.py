"""Great Expectations suites for the pipeline tables and their runner."""

import logging

# GX logs plugin registration and datasource loading at INFO, on import and on every context;
# that is noise in rrec's log. An explicit level set by the user is left alone.
if logging.getLogger("great_expectations").level == logging.NOTSET:
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
