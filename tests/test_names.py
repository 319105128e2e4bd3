"""Names built from input cannot escape their folder or collide (issue: hostile names)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.names import UnsafeNameError, check_config_names, check_domain_name, config_name

CORPUS = json.loads((Path(__file__).parent / "hostile" / "names" / "cases.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize(("name", "message"), [*CORPUS["refused"].items(), ("x" * 200, "not allowed")])
def test_names_that_could_escape_a_folder_are_refused(name: str, message: str) -> None:
    with pytest.raises(UnsafeNameError, match=message):
        check_domain_name(name)


@pytest.mark.parametrize("name", CORPUS["kept"])
def test_real_domain_names_pass(name: str) -> None:
    assert check_domain_name(name) == name


@pytest.mark.parametrize(("domains", "message"), CORPUS["colliding"])
def test_a_domain_whose_config_is_another_domains_item_catalog_is_refused(domains: list[str], message: str) -> None:
    with pytest.raises(UnsafeNameError, match=message):
        check_config_names(domains)


def test_distinct_domains_get_their_configs() -> None:
    assert check_config_names(["Grocery_and_Gourmet_Food", "Office_Products", "All_Beauty"]) == {
        "Grocery_and_Gourmet_Food": "grocery",
        "Office_Products": "office",
        "All_Beauty": "all_beauty",
    }
    assert config_name("Clothing, Shoes & Jewelry") == "clothing_shoes_jewelry"


def test_rrec_sample_refuses_a_domain_that_would_write_outside_out(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "out"
    result = subprocess.run(
        [str(Path(sys.executable).with_name("rrec")), "sample", "--out", str(out), "--domains", "../ESCAPED", "--users", "5"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "not allowed" in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("ESCAPED*")) and not list(out.glob("*"))
