"""Reading and writing the files that sbi_vi objects are saved to.

Every ``save`` of the package writes through :func:`save_object` (or records
:data:`VERSION_KEY` itself) and every ``load`` reads through :func:`load_torch_file`, so that
a truncated, corrupted or foreign file gives one clear error naming the file, the class it
was meant to hold and, when the file says so, the sbi_vi version that wrote it, instead of
the unpickler's ``EOFError`` or a miniz message.
"""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["VERSION_KEY", "load_object", "load_torch_file", "save_object", "written_by"]

VERSION_KEY = "sbi_vi_version"
"""Key under which a saved file records the sbi_vi version that wrote it."""

_OBJECT_KEY = "sbi_vi_object"
_CLASS_KEY = "sbi_vi_class"


def _version() -> str:
    from sbi_vi import __version__  # late: sbi_vi/__init__ imports modules that import us

    return __version__


def written_by(path: str | Path) -> str | None:
    """The sbi_vi version recorded in a saved file, read without unpickling anything.

    The pickle stream inside torch's zip archive is scanned opcode by opcode for the string
    :data:`VERSION_KEY` and the string that follows it, so a file whose classes no longer
    exist (or that is half corrupted) can still say which version wrote it.

    Args:
        path: The file.

    Returns:
        The version string, or ``None`` when the file does not say (or cannot be read).
    """
    try:
        with zipfile.ZipFile(Path(path)) as archive:
            name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            stream = archive.read(name)
        previous_was_key = False
        for opcode, arg, _ in pickletools.genops(stream):
            if not isinstance(arg, str) or "UNICODE" not in opcode.name:
                continue
            if previous_was_key:
                return arg
            previous_was_key = arg == VERSION_KEY
    except Exception:  # best effort only: the caller is already reporting a bad file
        return None
    return None


def load_torch_file(
    path: str | Path,
    *,
    what: str,
    map_location: str | torch.device | None = None,
) -> Any:
    """``torch.load(path, weights_only=False)`` with one clear error for a bad file.

    Args:
        path: The file to read.
        what: What the file should hold, for the message (e.g. ``"VIPosterior"``).
        map_location: Passed to :func:`torch.load`.

    Returns:
        Whatever the file holds (for files written by :func:`save_object`, the envelope
        dict; use :func:`load_object` to unwrap and type-check it).

    Raises:
        FileNotFoundError: ``path`` does not exist (``IsADirectoryError`` and
            ``PermissionError`` pass through unchanged as well).
        ValueError: The file is not a readable torch save (truncated, corrupted, not a
            torch file, or pickling classes that this version of the code does not have).
            The message names the file, ``what`` and the version that wrote it when the
            file records one; the original error is chained as ``__cause__``.
    """
    try:
        return torch.load(Path(path), map_location=map_location, weights_only=False)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as err:  # a truncated zip can also surface as OSError(EINVAL)
        version = written_by(path)
        origin = f" (written by sbi_vi {version}; this is {_version()})" if version else ""
        raise ValueError(
            f"{str(path)!r} is not a valid {what} file{origin}: it could not be read "
            f"({type(err).__name__}: {err}). The file may be truncated or corrupted, or not "
            f"have been written by {what}.save."
        ) from err


def save_object(obj: Any, path: str | Path, *, what: str) -> None:
    """Save ``obj`` with :func:`torch.save`, recording the class name and sbi_vi version.

    Args:
        obj: The object to pickle whole.
        path: The file to write.
        what: The class name the file holds (read back by :func:`load_object`).
    """
    envelope = {VERSION_KEY: _version(), _CLASS_KEY: what, _OBJECT_KEY: obj}
    torch.save(envelope, Path(path))


def load_object(
    path: str | Path,
    *,
    what: str,
    expected_type: type | tuple[type, ...],
    map_location: str | torch.device | None = None,
) -> Any:
    """Read an object written by :func:`save_object` (or a bare ``torch.save`` of it).

    Args:
        path: The file to read.
        what: The class name, for messages.
        expected_type: The object must be an instance of it.
        map_location: Passed to :func:`torch.load`.

    Returns:
        The object.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file cannot be read (see :func:`load_torch_file`) or does not hold
            an ``expected_type`` (the message says what it holds and which version wrote
            it).
    """
    content = load_torch_file(path, what=what, map_location=map_location)
    version = None
    if isinstance(content, dict) and _OBJECT_KEY in content:
        version = content.get(VERSION_KEY)
        content = content[_OBJECT_KEY]
    if not isinstance(content, expected_type):
        origin = f", written by sbi_vi {version}" if version else ""
        raise ValueError(
            f"{str(path)!r} is not a valid {what} file: it holds a "
            f"{type(content).__name__}{origin}, not a {what}."
        )
    return content
