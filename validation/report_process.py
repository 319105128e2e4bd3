"""The validation report written by a low-priority helper process that imports GX ahead.

GX takes about 3 CPU seconds to import, and only the report (results JSON and Data Docs)
needs it. ``rrec run`` starts :class:`ReportProcess` with the chain when a validation is due:
the helper lowers its own priority (``nice`` 19) and imports GX, so the import runs on cores the
stages leave idle (the cluster's start-up, the ends of the stages) instead of competing with the
workers; the driver process never loads GX at all. When the validate stage has its summary, it
sends it to the helper, which writes the report with :func:`validation.report.write_gx_reports`
(then the cores are idle anyway: the stage waits for its report).

Whatever goes wrong with the helper (it died, it could not import GX, writing raised), the
stage writes the report itself, in its own process, so an error surfaces there with its own
traceback. Without a helper (``rrec validate``, a chain whose validation is current) the stage
imports GX in a thread while the cluster checks the tables, as before.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.runtime import import_quietly
from validation.report import REPORT_MODULES
from validation.summary import ValidationSummary

log = logging.getLogger(__name__)

HELPER_NICENESS = 19
"""The helper's ``nice`` increment: it gets a core only when nothing else wants it."""
REPLY_TIMEOUT_S = 300.0
"""How long :meth:`ReportProcess.write` waits for the helper's answer before it stops the helper
and the stage writes the report itself. A report takes seconds (it is written from the summary,
not the data) once GX is imported; a helper that has not answered in minutes is stuck."""

STOP_GRACE_S = 5.0
"""How long a helper told to stop may take before it is killed."""

_current: ReportProcess | None = None


class ReportProcess:
    """A spawned helper process that imports GX at low priority and writes validation reports on request."""

    def __init__(self, reply_timeout: float = REPLY_TIMEOUT_S) -> None:
        self.reply_timeout = reply_timeout
        context = multiprocessing.get_context("spawn")  # no fork of a process that runs Dask threads
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child,), name="rrec-validation-report", daemon=True)
        self._process.start()
        child.close()

    def write(self, out_dir: Path, run_name: str, summary: ValidationSummary) -> Path | None:
        """Have the helper write the report of ``summary`` into ``out_dir``; its Data Docs index,
        or None when the helper could not (the caller then writes it itself)."""
        if not self._process.is_alive():  # died, or stopped after a timeout: not asked again
            log.warning("the validation report helper is gone (exit code %s); writing the report here", self._process.exitcode)
            return None
        try:
            self._conn.send((str(out_dir), run_name, summary))
            if not self._conn.poll(self.reply_timeout):
                log.warning(
                    "the validation report helper did not answer in %.0f s; stopping it and writing the report here", self.reply_timeout
                )
                self._stop()
                return None
            status, value = self._conn.recv()
        except (EOFError, OSError) as error:
            log.warning("the validation report helper is gone (%s); writing the report here", error)
            return None
        if status != "ok":
            log.warning("the validation report helper failed (%s); writing the report here", value)
            return None
        return Path(value)

    def close(self) -> None:
        """Stop the helper at once (it holds nothing to save: each report is complete when
        :meth:`write` returns), without waiting for its interpreter to tear GX down."""
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._conn.close()
        self._stop()

    def _stop(self) -> None:
        """End the helper: SIGTERM, then SIGKILL for one that does not go (a stopped process
        never handles SIGTERM)."""
        self._process.terminate()
        self._process.join(STOP_GRACE_S)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


def _serve(conn: Any) -> None:
    """The helper: lower its priority, import GX, then write each report it is sent until told to stop."""
    with contextlib.suppress(OSError, AttributeError):
        os.nice(HELPER_NICENESS)
    import_quietly(REPORT_MODULES)
    from validation.report import write_gx_reports

    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        out_dir, run_name, summary = request
        try:
            conn.send(("ok", str(write_gx_reports(Path(out_dir), run_name, summary))))
        except Exception as error:
            conn.send(("error", f"{type(error).__name__}: {error}"))


@contextlib.contextmanager
def report_process(wanted: bool = True) -> Iterator[ReportProcess | None]:
    """A :class:`ReportProcess` for the body (None when not ``wanted``): the one the validate
    stage uses (:func:`current_report_process`); stopped at the end."""
    global _current
    if not wanted:
        yield None
        return
    helper = ReportProcess()
    previous, _current = _current, helper
    try:
        yield helper
    finally:
        _current = previous
        helper.close()


def current_report_process() -> ReportProcess | None:
    """The helper of the enclosing :func:`report_process`, if any."""
    return _current


def write_report(out_dir: Path, run_name: str, summary: ValidationSummary) -> Path:
    """The validation report of ``summary`` in ``out_dir`` (see :func:`validation.report.write_gx_reports`):
    by the current helper process when there is one and it succeeds, else in this process."""
    helper = current_report_process()
    if helper is not None:
        index = helper.write(out_dir, run_name, summary)
        if index is not None:
            return index
    from validation.report import write_gx_reports

    return write_gx_reports(out_dir, run_name, summary)
