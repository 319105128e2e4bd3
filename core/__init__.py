"""The base layer every other package builds on: configuration, the stage protocol, table
schemas, the rationale format, progress and CLI helpers.

Nothing here imports Dask, great_expectations or torch at import time, so ``training`` (and
any tool) can use it without starting a cluster client or a validation framework.
"""

__version__ = "0.1.0"
