"""What ``pip install`` ships: every package directory, and the typing marker."""

from __future__ import annotations

from pathlib import Path

from setuptools.config.setupcfg import read_configuration

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_directory_is_installed() -> None:
    options = read_configuration(str(ROOT / "setup.cfg"))["options"]
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "pgpool_compat").rglob("__init__.py")
    }
    assert on_disk >= {"pgpool_compat", "pgpool_compat.bench"}
    assert set(options["packages"]) == on_disk


def test_typing_marker_is_shipped() -> None:
    options = read_configuration(str(ROOT / "setup.cfg"))["options"]
    assert "py.typed" in options["package_data"]["pgpool_compat"]
    assert (ROOT / "pgpool_compat" / "py.typed").exists()
