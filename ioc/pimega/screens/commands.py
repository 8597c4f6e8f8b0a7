"""``pimega opi DIR`` and ``pimega db DIR``: write the generated files, or ``--check`` them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from . import files
from .db import PATTERNS as DB_PATTERNS
from .db import db_files
from .opi import opi_files

OPI_PATTERNS = ("*.bob", "settings.ini")


def opi(argv: list[str]) -> int:
    return _run("opi", "Phoebus screens (.bob) and settings.ini", opi_files, OPI_PATTERNS, argv)


def db(argv: list[str]) -> int:
    return _run("db", "the PV list (pimega.pvlist.tsv) and autosave request files",
                db_files, DB_PATTERNS, argv)


def _run(command: str, what: str, generate: Callable[[int], Mapping[str, str]],
         patterns: Sequence[str], argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"pimega {command}", description=f"Generate {what} from the IOC's PVGroups.")
    parser.add_argument("directory", type=Path, help=f"where they go (the repository's {command}/)")
    parser.add_argument("--modules", type=int, choices=[1, 2, 4], default=1,
                        help="modules of the IOC they describe (default 1, as checked in)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if DIRECTORY differs from the generated files")
    args = parser.parse_args(argv)
    generated = generate(args.modules)
    if args.check:
        found = files.differences(generated, args.directory, patterns)
        for line in found:
            print(line, file=sys.stderr)
        if found:
            print(f"regenerate with: pimega {command} {args.directory}", file=sys.stderr)
        return 1 if found else 0
    for path in files.write(generated, args.directory):
        print(f"wrote {path}")
    for line in files.differences(generated, args.directory, patterns):
        print(f"warning: {line}: remove it if it is no longer needed", file=sys.stderr)
    return 0
