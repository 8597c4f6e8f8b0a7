"""Write generated files into a directory, or compare them with what is there."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def differences(files: Mapping[str, str], directory: Path, patterns: Sequence[str]) -> list[str]:
    """What differs between ``files`` (relative path → text) and ``directory``: a file that is
    missing or has other text, and a file matching ``patterns`` that is not generated."""
    found = []
    for relative, text in files.items():
        path = directory / relative
        if not path.is_file():
            found.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != text:
            found.append(f"{path}: differs from the generated text")
    stale = {p for pattern in patterns for p in directory.glob(pattern)} - {
        directory / relative for relative in files}
    found += [f"{path}: not generated (stale?)" for path in sorted(stale)]
    return found


def write(files: Mapping[str, str], directory: Path) -> list[Path]:
    """Write every file (creating folders); returns the paths whose text changed."""
    changed = []
    for relative, text in files.items():
        path = directory / relative
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        changed.append(path)
    return changed
