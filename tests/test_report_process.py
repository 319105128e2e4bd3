"""The validation report written by `rrec run`'s low-priority helper process (validation.report_process)."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import pytest

from validation.report import write_gx_reports
from validation.report_process import current_report_process, report_process, write_report
from validation.runner import ValidateSettings, read_summary, run_validation

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def summary(good_run: Path, dask_client):
    run_validation(good_run, dask_client, settings=ValidateSettings())
    return read_summary(good_run)


def _results(folder: Path) -> dict[str, dict]:
    """The GX results per suite, without the run identifiers (they hold the time of writing)."""
    results = {}
    for path in sorted((folder / "results").glob("*.json")):
        result = json.loads(path.read_text())
        result["meta"].pop("run_id")
        results[path.name] = result
    return results


def _pages(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in (folder / "data_docs").rglob("*") if p.is_file() and "validations" not in p.parts}


def test_the_helper_writes_the_report_this_process_would(summary, tmp_path: Path) -> None:
    assert current_report_process() is None
    with report_process() as helper:
        assert current_report_process() is helper
        deadline = time.monotonic() + 30
        while os.getpriority(os.PRIO_PROCESS, helper._process.pid) < min(19, os.getpriority(os.PRIO_PROCESS, 0) + 19):
            assert time.monotonic() < deadline, "the helper never lowered its priority"
            time.sleep(0.05)
        index = helper.write(tmp_path / "helper", "run", summary)  # written by the helper itself
        assert index == (tmp_path / "helper" / "data_docs" / "index.html").resolve() and index.is_file()
    assert current_report_process() is None and not helper._process.is_alive()
    write_gx_reports(tmp_path / "here", "run", summary)
    assert _results(tmp_path / "helper") == _results(tmp_path / "here") and len(_results(tmp_path / "here")) == 4
    assert _pages(tmp_path / "helper") == _pages(tmp_path / "here")


def test_a_dead_or_failing_helper_leaves_the_report_to_this_process(summary, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    with report_process() as helper:
        helper._process.terminate()
        helper._process.join()
        index = write_report(tmp_path / "dead", "run", summary)
    assert index.is_file() and "helper is gone" in caplog.text
    assert _results(tmp_path / "dead") == _results(Path(summary.run) / "validation")

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the report's folder should be")
    with report_process() as helper:
        assert helper.write(blocked, "run", summary) is None  # the helper reports its failure ...
        with pytest.raises(OSError):  # ... and this process, writing it itself, raises the real error
            write_report(blocked, "run", summary)
    assert "helper failed" in caplog.text


def test_no_helper_when_none_is_wanted() -> None:
    with report_process(False) as helper:
        assert helper is None and current_report_process() is None


def test_a_stuck_helper_is_stopped_and_this_process_writes_the_report(summary, tmp_path: Path, caplog) -> None:
    # A helper that never answers (here: stopped by SIGSTOP, as a hung process is) must not
    # hold the chain forever: after its reply timeout the stage writes the report itself.
    caplog.set_level(logging.WARNING)
    with report_process() as helper:
        helper.reply_timeout = 1.0
        os.kill(helper._process.pid, signal.SIGSTOP)
        started = time.monotonic()
        index = write_report(tmp_path / "stuck", "run", summary)
        assert time.monotonic() - started < 60
        assert not helper._process.is_alive()  # stopped, even though a stopped process ignores SIGTERM
        assert helper.write(tmp_path / "again", "run", summary) is None  # and not asked again
    assert index.is_file() and "did not answer in 1 s" in caplog.text
    assert _results(tmp_path / "stuck") == _results(Path(summary.run) / "validation")
