"""Great Expectations suites for the pipeline tables and their runner."""
