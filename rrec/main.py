"""Entry point of the ``rrec`` console script.

Kept apart from :mod:`rrec.cli` on purpose: a Dask worker process started with ``spawn``
re-imports the script's module, and this one imports nothing, so a worker does not load every
command's module (about a second of CPU per worker at every cluster start).
"""

from __future__ import annotations


def main() -> None:
    """Run the ``rrec`` command line."""
    from rrec.cli import app

    app()
