"""Atomic file writes: a crash mid-write never leaves a truncated file behind.

:func:`atomic_write` writes through a temporary file ``.<name>.<8 random characters><suffix>``
in the target's directory, flushes it to disk (``os.fsync``) and only then moves it into place
with :func:`os.replace`; the directory is synced too, so the rename itself survives a power
loss. Any exception, ``KeyboardInterrupt`` and ``SystemExit`` included, removes the temporary
file and leaves the previous version of the target untouched. A process killed outright
(``SIGKILL``, a power cut) cannot clean up after itself: :func:`remove_stale_temp_files`
removes what such a write left behind (``pyro-mmvae train`` calls it when it opens a run
directory).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, List

# the random part of a tempfile.mkstemp name (tempfile._RandomNameSequence)
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}(?P<suffix>(\.[^.]*)?)")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where directories cannot be
    opened, e.g. on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def atomic_write(path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write ``path`` through a temporary file in the same directory, flushed to disk with
    :func:`os.fsync` before :func:`os.replace` moves it into place.

    ``write(f)`` receives the open temporary file (or, for ``mode=None``, its path, for writers
    such as ``matplotlib``'s ``savefig`` that open files themselves). The file gets ordinary
    permissions (``mkstemp`` creates 0600). On any exception (``BaseException``: an interrupt
    too) the temporary file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    try:
        if mode is None:
            os.close(fd)
            write(tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            with os.fdopen(fd, mode) as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(path.parent)


def is_temp_file(path) -> bool:
    """Whether ``path`` is named like a temporary file of :func:`atomic_write`
    (``.<name>.<8 random characters><suffix of name>``)."""
    match = _TEMP_NAME.fullmatch(Path(path).name)
    return match is not None and match["suffix"] == Path(match["name"]).suffix


def remove_stale_temp_files(directory) -> List[Path]:
    """Delete the temporary files that interrupted :func:`atomic_write` calls left in
    ``directory`` (not its subdirectories) and return their paths.

    Only call it on a directory no other process is writing to at the same time: a write in
    progress there would lose its temporary file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in sorted(directory.iterdir()):
        if entry.is_file() and not entry.is_symlink() and is_temp_file(entry):
            try:
                entry.unlink()
            except FileNotFoundError:
                continue
            removed.append(entry)
    return removed


@contextlib.contextmanager
def sigterm_as_exit():
    """While the command runs, ``SIGTERM`` raises ``SystemExit(143)`` in the main thread, as
    ``Ctrl-C`` raises ``KeyboardInterrupt``: a write in progress removes its temporary file and
    the previous file stays intact. The previous handler is restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
