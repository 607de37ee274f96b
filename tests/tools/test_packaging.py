"""What ``pip install`` ships: every package directory, and the typing marker."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from packaging.requirements import Requirement
from setuptools.config.setupcfg import read_configuration

from pgpool_compat import metrics

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


def _requirements(extra: str) -> list[Requirement]:
    options = read_configuration(str(ROOT / "setup.cfg"))["options"]
    return [Requirement(line) for line in options["extras_require"][extra]]


def test_extras_floors_are_the_first_releases_that_work() -> None:
    """OpenTelemetry before 1.30 has no histogram buckets (instrument() cannot run on it);
    prometheus-client before 0.20 returns None from start_http_server (docs/metrics.md's
    example unpacks the server and its thread)."""
    # The first release that works, and the last that does not.
    floors = {
        "opentelemetry-api": ("1.30.0", "1.29.0"),
        "opentelemetry-sdk": ("1.30.0", "1.29.0"),
        "prometheus-client": ("0.20.0", "0.19.0"),
    }
    options = read_configuration(str(ROOT / "setup.cfg"))["options"]
    seen = set()
    for extra in options["extras_require"]:
        for requirement in _requirements(extra):
            if requirement.name not in floors:
                continue
            seen.add((extra, requirement.name))
            works, fails = floors[requirement.name]
            assert requirement.specifier.contains(works), (extra, str(requirement))
            assert not requirement.specifier.contains(fails), (extra, str(requirement))
    assert {("metrics", "opentelemetry-api"), ("prometheus", "prometheus-client")} <= seen
    assert metrics._OTEL_REQUIREMENT == "opentelemetry-api>=1.30"  # what its error asks for


def test_license_is_shipped(tmp_path: Path) -> None:
    """setup.cfg says MIT: the license text is in the repository, the sdist and (through
    license_files, which setuptools copies into the .dist-info) the wheel."""
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 the pgpool_compat developers" in text
    metadata = read_configuration(str(ROOT / "setup.cfg"))["metadata"]
    assert metadata["license"] == "MIT" and metadata["license_files"] == ["LICENSE"]
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tmp_path / name)
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "pgpool_compat", tmp_path / "pgpool_compat", ignore=ignore)
    build = "from setuptools import build_meta; print(build_meta.build_sdist('dist'))"
    done = subprocess.run(
        [sys.executable, "-c", build], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    sdist = tmp_path / "dist" / done.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    assert f"{sdist.name[: -len('.tar.gz')]}/LICENSE" in names
