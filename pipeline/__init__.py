"""rationale-rec data pipeline: sample, ingest, sequences, annotate, filter, judge, run."""

__version__ = "0.1.0"
