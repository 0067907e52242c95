"""The files ipsp reads and writes: inputs checked and read without blocking or without
bound, outputs written without ever harming an input or leaving half a file behind.

Every file the ``ipsp`` commands and loaders read whole (configuration, SA and secrets files,
key files, certificates and CRLs) goes through :func:`read_input`: a regular file only,
opened without blocking (a FIFO named by mistake cannot hang a reload; /dev/zero is refused,
not read for ever), and at most the size its kind of file can have.

Every file the ``ipsp`` command writes (trace encrypt/decrypt/gen output, bench JSON and
plots) goes through :func:`replacing`: the output is refused when it is the same file as
one of the inputs (same device and inode, so through symbolic and hard links too; opening
it for writing would truncate the input under the reader's mapping), the data goes to a
temporary file in the output's own directory, and that file is renamed over the output
only when the writer finished without an exception (rename(2) within one file system is
atomic), else removed. A crash or a full disk leaves the old output, or none, never a part.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import Iterable, Iterator

__all__ = ["FileError", "replacing", "check_input", "read_input"]


class FileError(ValueError):
    """A file that cannot be used as given: ``path`` and ``problem``, shown as "PATH: problem"."""

    def __init__(self, path: str | os.PathLike[str], problem: str, *, unreadable: bool = False) -> None:
        self.path = os.fsdecode(path)
        self.problem = problem
        self.unreadable = unreadable      # the system refused it (problem is its reason), not its kind or size
        super().__init__(f"{self.path}: {problem}")


def _name(path: str | os.PathLike[str]) -> str:
    name = os.fsdecode(path)
    if not name:
        raise FileError(name, "empty file name")
    if "\0" in name:
        raise FileError(name.replace("\0", "\\0"), "file name contains a NUL byte")
    return name


def _problem(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def check_input(path: str | os.PathLike[str]) -> os.stat_result:
    """Stat an input file; FileError if it is missing, unreadable or not a regular file
    (a directory, a FIFO, a device: /dev/zero would be read forever)."""
    name = _name(path)
    try:
        st = os.stat(name)
    except OSError as exc:
        raise FileError(name, _problem(exc)) from None
    if stat.S_ISDIR(st.st_mode):
        raise FileError(name, "is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise FileError(name, "is not a regular file")
    if not os.access(name, os.R_OK):
        raise FileError(name, "Permission denied")
    return st


def read_input(path: str | os.PathLike[str], limit: int | None) -> tuple[bytes, os.stat_result]:
    """The contents of the regular file at *path* (at most *limit* bytes, None: any size) and
    its status; FileError (never another exception) says what is wrong with it."""
    name = _name(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise FileError(name, _problem(exc), unreadable=True) from None
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise FileError(name, os.strerror(errno.EISDIR), unreadable=True)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise FileError(name, "is not a regular file")
    with open(fd, "rb") as f:
        try:
            data = f.read() if limit is None else f.read(limit + 1)
        except OSError as exc:
            raise FileError(name, _problem(exc), unreadable=True) from None
    if limit is not None and len(data) > limit:
        raise FileError(name, f"is larger than {limit} bytes")
    return data, st


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str], *, inputs: Iterable[str | os.PathLike[str]] = ()) -> Iterator[str]:
    """Yields the name of a fresh temporary file next to ``path``; on a normal exit it
    replaces ``path``, on an exception it is removed and ``path`` is untouched.

    ``path`` naming a symbolic link writes the file the link points to (the link stays); a
    pipe or a device (``/dev/stdout``) is written directly. Raises FileError before anything
    is written when ``path`` is one of ``inputs``, is a directory, or its directory does not
    exist or is not writable.
    """
    name = _name(path)
    try:
        out = os.stat(name)
    except FileNotFoundError:
        out = None
    except OSError as exc:
        raise FileError(name, _problem(exc)) from None
    if out is not None:
        if stat.S_ISDIR(out.st_mode):
            raise FileError(name, "is a directory, not a file")
        for i in inputs:
            try:
                st = os.stat(_name(i))
            except OSError:
                continue             # an input that cannot be statted is not this file
            if (st.st_dev, st.st_ino) == (out.st_dev, out.st_ino):
                raise FileError(name, f"is the same file as the input {os.fsdecode(i)}: refusing to overwrite it")
        if not stat.S_ISREG(out.st_mode):
            # a pipe or a device (/dev/stdout, /dev/null): written through, nothing to replace
            yield name
            return
    target = os.path.realpath(name)
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise FileError(name, f"directory {folder} does not exist")
    base = os.path.basename(target)
    for attempt in range(100):
        tmp = os.path.join(folder, f".{base}.{os.getpid()}.{attempt}.tmp")
        try:
            # mode 0666 less the umask, as open(path, "w") would have created the output
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise FileError(name, f"cannot create a file in {folder}: {_problem(exc)}") from None
    else:
        raise FileError(name, f"cannot create a temporary file in {folder}")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, FileError) and exc.filename in (None, tmp, target):
            # a full disk, a quota: name the output the user gave, not the temporary file
            raise FileError(name, _problem(exc)) from None
        raise
