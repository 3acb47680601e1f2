"""Files rewritten whole or not at all, and a refused write said in one line naming the file.

Every file the project writes in place of an old one (README.md's findings block, a report
page, an evaluation's metrics.json and samples.jsonl, findings.md, a checkpoint's ``latest``
pointer, a score-cache manifest, ...) goes through ``atomic_write_text`` /
``atomic_write_bytes``, or is streamed through ``atomic_open``: the new content goes to a
temporary file in the same folder, is flushed and fsynced, and only then renamed over the old
file. A kill or a full disk at any moment leaves the old file byte for byte, never one cut
mid-sentence, and no temporary file behind. An existing file keeps its permissions; a new one
gets the usual ones (0666 less the umask), not tempfile's 0600.

An OSError while writing (a full disk, a quota, a file-size limit, a read-only folder) becomes a
``WriteError``: one line from the OS error naming the path actually written and what to do, e.g.
``No space left on device writing README.md (/abs/README.md): free space, then rerun; the old
file is unchanged``. Its errno is the OS's, so code that asks for ENOSPC still finds it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

# What to do about a refused write, by errno; anything else gets DEFAULT_ADVICE.
ADVICE = {
    errno.ENOSPC: "free space",
    errno.EDQUOT: "free space (the disk quota is used up)",
    errno.EFBIG: "raise the file-size limit (ulimit -f) or write elsewhere",
    errno.EROFS: "write to a file system that is not read-only",
    errno.EACCES: "make the folder writable",
    errno.EPERM: "make the folder writable",
}
DEFAULT_ADVICE = "check the folder and its free space"


class WriteError(OSError):
    """A write the OS refused, as one line (made by ``write_error``); errno is the OS's."""

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 28]" prefix
        return self.strerror


def write_error(error: OSError, what: str, then: str = "rerun") -> WriteError:
    """The OS's error as one line: its reason, what was written, what to do, and how to carry
    on (``then``: "rerun", "rerun the same command; it resumes ..."). A WriteError is named
    anew from the OS error under it."""
    if isinstance(error, WriteError) and isinstance(error.__cause__, OSError):
        error = error.__cause__
    reason = error.strerror or str(error)
    return WriteError(error.errno, f"{reason} writing {what}: {advice(error)}, then {then}")


def advice(error: OSError) -> str:
    """What to do about a refused write, in a few words ("free space")."""
    return ADVICE.get(error.errno, DEFAULT_ADVICE)


def named(path: str | Path) -> str:
    """A path as messages name it: the file name, then where (``README.md (/a/README.md)``)."""
    path = Path(path).absolute()
    return f"{path.name} ({path})"


@contextlib.contextmanager
def write_errors_named(path: str | Path, what: str | None = None,
                       then: str = "rerun") -> Iterator[None]:
    """Turn an OSError raised in the block into a WriteError naming path (or what). A
    WriteError from deeper down already names its file and passes unchanged."""
    try:
        yield
    except WriteError:
        raise
    except OSError as error:
        raise write_error(error, what or named(path), then) from error


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", *, encoding: str = "utf-8",
                what: str | None = None) -> Iterator[IO]:
    """A handle ("w" text or "wb" bytes) for streaming path's new content, which replaces path
    when the block ends without an error; path is left as it was otherwise. The block should
    only write: an OSError in it is reported as a failure to write path."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole file: mode 'w' or 'wb', not {mode!r}")
    target = Path(os.path.realpath(path))  # a symlink's target is rewritten; the link stays
    existing = _mode(target)
    kept = "the old file is unchanged" if existing is not None else "nothing was written"
    # Same folder, so the rename is atomic; the name's length stays under NAME_MAX (255).
    tmp = target.with_name(f".{target.name[:200]}.{secrets.token_hex(4)}.tmp")
    with write_errors_named(target, what, then=f"rerun; {kept}"):
        try:
            descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask
            with open(descriptor, mode, encoding=None if "b" in mode else encoding) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            if existing is not None:
                os.chmod(tmp, existing)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)  # gone already after the rename


def atomic_write_text(path: str | Path, text: str, *, encoding: str = "utf-8",
                      what: str | None = None) -> Path:
    """Replace path's content with text, whole or not at all (see the module docstring)."""
    with atomic_open(path, "w", encoding=encoding, what=what) as handle:
        handle.write(text)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes, *, what: str | None = None) -> Path:
    """Replace path's content with data, whole or not at all (see the module docstring)."""
    with atomic_open(path, "wb", what=what) as handle:
        handle.write(data)
    return Path(path)


def _mode(path: Path) -> int | None:
    """The permission bits of an existing file, None if there is none."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None
