"""``python -m pgpool_compat COMMAND``; the one command is ``bench``."""

from __future__ import annotations

import sys
from typing import Optional, Sequence

from ._commands import shown_python

USAGE = f"usage: {shown_python()} -m pgpool_compat bench [--help] [options]\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "bench":
        # Imported here so that `python -m pgpool_compat --help` needs no bench dependencies.
        from .bench.cli import main as bench_main

        return bench_main(args[1:])
    if args and args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0
    sys.stderr.write(USAGE)
    sys.stderr.write(f"unknown command {args[0]!r}\n" if args else "a command is required\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
