"""Names built from input cannot escape their folder or collide (issue: hostile names)."""

from __future__ import annotations

import pytest

from core.names import UnsafeNameError, check_config_names, check_domain_name, config_name


@pytest.mark.parametrize(
    "name",
    ["../../ESCAPED_RUN", "/etc", "a/b", "a\\b", "..", "Foo..", "", " Foo", "Foo\n", "Foo\x00", "x" * 200, ".hidden", "-rf"],
)
def test_names_that_could_escape_a_folder_are_refused(name: str) -> None:
    with pytest.raises(UnsafeNameError, match="not allowed"):
        check_domain_name(name)


@pytest.mark.parametrize("name", ["Grocery_and_Gourmet_Food", "All_Beauty", "Clothing, Shoes & Jewelry", "Kindle_Store", "Books 2"])
def test_real_domain_names_pass(name: str) -> None:
    assert check_domain_name(name) == name


def test_a_domain_whose_config_is_another_domains_item_catalog_is_refused() -> None:
    with pytest.raises(UnsafeNameError, match="foo_items"):
        check_config_names(["Foo", "Foo_Items"])
    with pytest.raises(UnsafeNameError, match="'all_beauty'"):
        check_config_names(["All_Beauty", "All Beauty"])


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
