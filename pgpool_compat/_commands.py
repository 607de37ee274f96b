"""How messages and help texts name commands: with the interpreter that is running, since a
bare ``python`` is often missing (Debian) or another environment's."""

from __future__ import annotations

import os
import sys

__all__ = ["pip_install", "shown_python"]


def shown_python() -> str:
    """This interpreter as a user would type it: relative when it is a virtualenv's in the
    current directory (``.venv/bin/python``), else its full path."""
    executable = sys.executable or "python3"
    try:
        relative = os.path.relpath(executable)
    except ValueError:  # another drive (Windows)
        return executable
    in_a_venv_here = not relative.startswith("..") and len(relative.split(os.sep)) <= 3
    return relative if in_a_venv_here else executable


def pip_install(requirement: str) -> str:
    """The command that installs ``requirement`` into this interpreter's environment."""
    return f"{shown_python()} -m pip install {requirement}"
