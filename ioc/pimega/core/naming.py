"""File names and directories by areaDetector's NDFile rules (FilePath, FileName, FileTemplate,
FileNumber, CreateDirectory), so a beamline's habits carry over unchanged."""

import errno
import os
import re
from collections.abc import Sequence

from pimega.core.errors import ConfigError

# One C printf conversion: flags, width, precision, length modifier, conversion character.
_CONVERSION = re.compile(r"%(?P<spec>[-+ #0]*(?:\d+|\*)?(?:\.(?:\d+|\*)?)?[hlL]*)(?P<conv>.?)")
_INTEGER_CONVERSIONS = frozenset("diouxX")
#: Widest field a template may ask for: ADCore's own are 3 to 6 digits.
MAX_FIELD_WIDTH = 20
#: Longest file name (one path component) most filesystems take, in bytes.
NAME_MAX = 255


def full_file_name(path: str, name: str, template: str, number: int) -> str:
    """``template % (path, name, number)`` as ADCore's createFileName does with C printf.

    The template must take two strings (path, name) and optionally one integer (number), e.g.
    ``%s%s_%6.6d.h5`` or ``%s%s.h5``; anything else raises ConfigError.
    """
    matches = [match for match in _CONVERSION.finditer(template)
               if match["conv"] != "%" or match["spec"]]
    conversions = [match["conv"] for match in matches]
    takes_number = len(conversions) == 3 and conversions[2] in _INTEGER_CONVERSIONS
    star_width = any("*" in match["spec"] for match in matches)
    if conversions[:2] != ["s", "s"] or not (len(conversions) == 2 or takes_number) \
            or star_width:
        raise ConfigError(
            f"FileTemplate {template!r} must contain %s for the path, %s for the name and at "
            f"most one integer conversion (%d, %6.6d, ...) for the number, in that order; "
            f"it has {['%' + c for c in conversions]}")
    widths = [int(n) for match in matches for n in re.findall(r"\d+", match["spec"])]
    if any(width > MAX_FIELD_WIDTH for width in widths):
        raise ConfigError(f"FileTemplate {template!r} asks for a field wider than "
                          f"{MAX_FIELD_WIDTH} characters")
    if os.sep in name:
        raise ConfigError(f"FileName {name!r} must not contain {os.sep!r}: the directory "
                          "belongs in FilePath")
    values = (path, name, number) if takes_number else (path, name)
    full = template % values
    if not full.startswith(path) or os.sep in full[len(path):]:
        raise ConfigError(f"FileTemplate {template!r} puts the file outside FilePath: {full!r}")
    if len(os.path.basename(full).encode()) > NAME_MAX:
        raise ConfigError(f"file name {os.path.basename(full)!r} is longer than {NAME_MAX} bytes")
    return full


def normalise_path(path: str) -> str:
    """The path with one trailing separator, as ADCore's checkPath leaves FilePath.

    Like ADCore, one trailing separator is removed and one added, and an empty path stays empty.
    """
    if not path:
        return path
    return path.removesuffix(os.sep) + os.sep


def check_within(path: str, roots: Sequence[str]) -> None:
    """Raise ConfigError unless ``path``, resolved (``..`` and symbolic links followed), lies
    in one of ``roots`` (no roots: anywhere)."""
    if not roots or not path:  # an empty path is refused for what it is, elsewhere
        return
    real = os.path.realpath(path)
    for root in roots:
        base = os.path.realpath(root)
        if os.path.commonpath([real, base]) == base:
            return
    raise ConfigError(f"FilePath {path!r} is outside the data directories this IOC writes to "
                      f"({', '.join(roots)})")


def path_exists(path: str) -> bool:
    """Whether the path names an existing directory (ADCore's FilePathExists)."""
    return os.path.isdir(path)


def ensure_directory(path: str, create_directory: int) -> None:
    """Make sure the directory exists and is writable, creating it as ADCore's CreateDirectory says.

    ``create_directory`` (ADCore's createFilePath pathDepth), with the path split into its
    components d0/d1/.../dk-1:

    - 0: create nothing.
    - N > 0: assume the first N components exist; create components N ... k-1 where missing
      (1 creates everything below the root's first level).
    - N < 0: create at most the last |N| components: components max(k + N, 1) ... k-1.

    Raises ConfigError saying why when the directory is missing and may not or cannot be created,
    or cannot be written.
    """
    if not path:
        raise ConfigError("FilePath is empty: set it to the directory the files go to")
    if not path_exists(path) and create_directory != 0:
        _create_components(path, create_directory)
    if os.path.exists(path) and not path_exists(path):
        raise ConfigError(f"FilePath {path!r} exists but is not a directory")
    if not path_exists(path):
        reason = ("CreateDirectory is 0, so it is not created" if create_directory == 0
                  else f"CreateDirectory={create_directory} does not allow creating it")
        raise ConfigError(f"directory {path!r} does not exist and {reason}")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"directory {path!r} is not writable by this process")


def next_free_number(path: str, name: str, template: str, number: int) -> int:
    """The first file number from ``number`` on whose file does not exist yet."""
    while os.path.exists(full_file_name(path, name, template, number)):
        number += 1
    return number


def _create_components(path: str, create_directory: int) -> None:
    """ADCore's createFilePath: mkdir the components from index pathDepth on (<0: from the end)."""
    root = path[: len(path) - len(path.lstrip(os.sep))]
    parts = [part for part in path.split(os.sep) if part]
    first = create_directory if create_directory > 0 else max(len(parts) + create_directory, 1)
    for index in range(first, len(parts)):
        directory = root + os.sep.join(parts[: index + 1])
        try:
            os.mkdir(directory, 0o777)
        except FileExistsError:
            continue
        except OSError as error:
            raise ConfigError(
                f"cannot create directory {directory!r} for FilePath {path!r} "
                f"(CreateDirectory={create_directory} creates components {first + 1} to "
                f"{len(parts)} only): {os.strerror(error.errno or errno.EIO)}") from error
