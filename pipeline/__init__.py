"""rationale-rec data pipeline: sample, ingest, sequences, annotate, filter, judge, run."""

from core import __version__

__all__ = ["__version__"]
