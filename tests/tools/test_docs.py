"""The documentation is tested: every Python example runs, and the site builds with no warning.

Conventions (docs/contributing.md): a ``python`` fenced block in README.md or docs/ is run
against the test server, whose address the page reads from ``DATABASE_URL`` or the ``PG*``
variables; a block that cannot run is fenced ``python-not-run`` under a visible line starting
``Not run by the tests:``. Each page runs in its own interpreter (tests/tools/docs_examples.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import psycopg2.extensions
import pytest
from sybil import Document
from sybil.parsers.markdown.lexers import FencedCodeBlockLexer

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUNNER = Path(__file__).with_name("docs_examples.py")

#: Fence languages a page may use. Anything else that looks like Python (``py``, ``pycon``,
#: ``python3``) would be skipped silently by the runner, so it is refused.
FENCE_LANGUAGES = {"python", "python-not-run", "sh", "text", "ini", "yaml", "toml", "diff", ""}
NOT_RUN_NOTE = "Not run by the tests:"
README_MAX_LINES = 300
#: Lines at least this long, found word for word in README.md and a page, are a copy.
REPEATED_LINE_MIN_CHARS = 60
#: A command run with a bare ``python``, which a Debian user does not have (``python3 -m venv``
#: is how the venv gets made, so it stays); ``.venv/bin/python -m ...`` is the form to use.
BARE_PYTHON = re.compile(r"(?<![\w./-])python3?(?: -m (?!venv\b)| [\w./-]+\.py\b)")
PAGE_TIMEOUT_S = 90


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def libpq_environment(dsn: str) -> dict[str, str]:
    """``DATABASE_URL`` (a libpq URI) and the ``PG*`` variables for the server at ``dsn``."""
    params = psycopg2.extensions.parse_dsn(dsn)
    host = params.get("host", "127.0.0.1")
    port = params.get("port", "5432")
    user = params.get("user", "postgres")
    dbname = params.get("dbname", user)
    password = params.get("password")
    credentials = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    if host.startswith("/"):  # a socket directory goes in the query string
        url = f"postgresql://{credentials}@:{port}/{quote(dbname, safe='')}?host={quote(host)}"
    else:
        url = f"postgresql://{credentials}@{host}:{port}/{quote(dbname, safe='')}"
    env = {
        "DATABASE_URL": url,
        "PGHOST": host,
        "PGPORT": str(port),
        "PGUSER": user,
        "PGDATABASE": dbname,
    }
    if password:
        env["PGPASSWORD"] = password
    return env


def test_database_url_names_the_same_server_as_the_dsn() -> None:
    dsn = "host=127.0.0.1 port=6543 user=app dbname='my db' password='p@ss:/ word'"
    env = libpq_environment(dsn)
    assert psycopg2.extensions.parse_dsn(env["DATABASE_URL"]) == psycopg2.extensions.parse_dsn(dsn)
    assert (env["PGHOST"], env["PGPORT"], env["PGUSER"], env["PGDATABASE"], env["PGPASSWORD"]) == (
        "127.0.0.1", "6543", "app", "my db", "p@ss:/ word")


def _fences(page: Path) -> list[tuple[int, str]]:
    """(line, language) of every fenced block of ``page``, found by Sybil's own lexer."""
    text = page.read_text(encoding="utf-8")
    lexer = FencedCodeBlockLexer(language=r"[^\n]*")
    return [
        (text.count("\n", 0, region.start) + 1, region.lexemes["language"].strip())
        for region in lexer(Document(text, str(page)))
    ]


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_examples_run(page: Path, pg_dsn: str, tmp_path: Path) -> None:
    """Each page's Python blocks run in order against the test server and clean up."""
    env = {**os.environ, **libpq_environment(pg_dsn)}
    env.pop("PGSERVICE", None)
    result = subprocess.run(
        [sys.executable, str(RUNNER), str(page)],
        cwd=tmp_path,  # an example that writes a file writes it here
        env=env,
        capture_output=True,
        text=True,
        timeout=PAGE_TIMEOUT_S,
    )
    assert result.returncode == 0, f"{_page_id(page)}:\n{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_no_python_block_is_skipped_silently(page: Path) -> None:
    """Every block is run, or fenced ``python-not-run`` under a visible reason."""
    lines = page.read_text(encoding="utf-8").splitlines()
    known = ", ".join(sorted(FENCE_LANGUAGES - {""}))
    problems = []
    for line, language in _fences(page):
        if language not in FENCE_LANGUAGES:
            problems.append(f"line {line}: fence language {language!r} (known: {known})")
        if language == "python-not-run":
            above = [text for text in lines[: line - 1] if text.strip()]
            if not above or not above[-1].lstrip("*_ ").startswith(NOT_RUN_NOTE):
                problems.append(f"line {line}: python-not-run needs a line {NOT_RUN_NOTE!r} above")
    assert not problems, f"{_page_id(page)}: " + "; ".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_commands_name_the_venv_interpreter(page: Path) -> None:
    lines = page.read_text(encoding="utf-8").splitlines()
    bare = [f"line {number}: {text.strip()}" for number, text in enumerate(lines, 1)
            if BARE_PYTHON.search(text)]
    assert not bare, f"{_page_id(page)}: use .venv/bin/python: " + "; ".join(bare)


@pytest.mark.parametrize("page", PAGES[1:], ids=_page_id)
def test_no_docs_line_repeats_the_readme(page: Path) -> None:
    """Each topic is written once: the guide links to the README instead of copying it."""
    def lines(path: Path) -> list[str]:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]

    readme = set(lines(ROOT / "README.md"))
    copied = [line for line in lines(page)
              if len(line) > REPEATED_LINE_MIN_CHARS and line in readme]
    assert not copied, f"{_page_id(page)} repeats README.md: {copied}"


def test_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


def test_site_builds_strict(tmp_path: Path) -> None:
    """``mkdocs build --strict``: every page in the nav, every link and reference resolves."""
    # Not --quiet: it silences the warnings, and --strict then has nothing to fail on.
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict",
         "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's end-of-life banner
        capture_output=True,
        text=True,
        timeout=PAGE_TIMEOUT_S,
    )
    output = result.stdout + result.stderr
    warnings = [line for line in output.splitlines() if line.startswith("WARNING")]
    assert result.returncode == 0 and not warnings, output
    assert (tmp_path / "site" / "index.html").is_file()
