"""Configuration and interface hygiene: unknown config sections, one section registry, progress off a terminal."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from core.config import COMMON_KEYS, SECTIONS, ConfigError, load_config, section
from core.progress import INTERVAL_ENV, LoggedProgress, make_progress
from core.stage import STAGE_ORDER
from pipeline.sample import SampleSettings

REPO = Path(__file__).resolve().parent.parent
RREC = Path(sys.executable).with_name("rrec")
SOURCE_FOLDERS = ("core", "pipeline", "validation", "datacards", "release", "training", "rrec", "benchmarks")


def test_a_misspelt_section_is_an_error_naming_the_known_ones(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"seed": 1, "sequence": {"k": 3}}))
    with pytest.raises(ConfigError) as error:
        load_config(config)
    message = str(error.value)
    assert "'sequence' (did you mean 'sequences'?)" in message
    assert all(name in message for name in (*COMMON_KEYS, *SECTIONS))


def test_the_cli_reports_an_unknown_section_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"sampel": {"users": 5}}))
    done = subprocess.run(
        [str(RREC), "sample", "--out", str(tmp_path / "out"), "--config", str(config)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown top-level section(s) 'sampel' (did you mean 'sample'?)" in lines[0], done.stderr
    assert not (tmp_path / "out").exists()


def test_every_known_section_and_the_demo_config_load(tmp_path: Path) -> None:
    config = tmp_path / "all.yaml"
    config.write_text(yaml.safe_dump({name: {} for name in SECTIONS} | {"seed": 3}))
    assert section(load_config(config), "sample", SampleSettings).seed == 3
    load_config(REPO / "configs" / "demo.yaml")


def test_every_section_a_command_reads_is_registered() -> None:
    """The one registry is complete: each section name passed to section() or settings_for() is in SECTIONS.

    Stage commands pass their stage's name (core.stage.STAGE_ORDER); other commands a literal.
    """
    call = re.compile(r"""(?:\bsection|\bsettings_for|\b_settings)\(\s*[^,()]+(?:\([^()]*\))?\s*,\s*["']([a-z_]+)["']""")
    used = set()
    for folder in SOURCE_FOLDERS:
        for path in (REPO / folder).rglob("*.py"):
            used |= set(call.findall(path.read_text(encoding="utf-8")))
    assert {"sample", "release", "card", "evaluate"} <= used  # the pattern finds the calls
    used |= set(STAGE_ORDER)
    assert used <= set(SECTIONS), f"sections read but not registered in core.config.SECTIONS: {sorted(used - set(SECTIONS))}"
    with pytest.raises(ConfigError, match="not registered"):
        section({}, "sequence", SampleSettings)


def test_without_a_terminal_progress_is_logged_while_a_task_makes_no_progress(caplog: pytest.LogCaptureFixture) -> None:
    stop = threading.Event()
    with caplog.at_level(logging.INFO, logger="rrec.progress"), LoggedProgress(disable=True, interval=0.05) as progress:
        task = progress.add_task("slow stage", total=4)
        progress.advance(task)
        stop.wait(0.5)  # a long step: no advance for ten intervals
    lines = [record.getMessage() for record in caplog.records if record.name == "rrec.progress"]
    assert len(lines) >= 3, lines
    assert all(line.startswith("slow stage: 1/4 (25%)") for line in lines)


def test_a_command_whose_output_is_not_a_terminal_logs_progress_lines(tmp_path: Path) -> None:
    env = {"PATH": str(Path(sys.executable).parent), INTERVAL_ENV: "0.05", "HOME": str(tmp_path)}
    done = subprocess.run(
        [str(RREC), "sample", "--out", str(tmp_path), "--users", "3000", "--domains", "Office_Products"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    logged = done.stdout + done.stderr  # the log handler writes wherever the CLI configured it
    progress = re.findall(r"sample Office_Products: ([\d,]+)/3,000", logged)
    assert len(progress) >= 2 and progress[-1] == "3,000", logged[-2000:]


def test_on_a_terminal_the_bar_is_drawn_instead_of_log_lines() -> None:
    progress = make_progress()
    assert isinstance(progress, LoggedProgress) and progress.disable is not progress.console.is_terminal
