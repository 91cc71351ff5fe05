"""Reading user files: the one capped, regular-files-only reader every input path goes through.

Why: a path the user names (a profile, a fleet file, a vmxcap or rdmsr dump, an inventory, a CPU model
definition, ``/proc/cpuinfo``-style or XML captures) can be ``/dev/zero``, a FIFO nobody writes to, or a
symlink to either. Reading those "until EOF" never ends (``fleet import --db z.db /dev/zero`` grew past
23 GB), and ``open()`` of a FIFO blocks forever. So every reader:

1. opens with ``O_NONBLOCK`` (a FIFO's ``open`` returns at once instead of waiting for a writer) and
   ``O_NOCTTY``, then ``fstat``s *the opened file* (no check-then-open race; a symlink is followed, and what
   it points to is judged) and refuses anything that is not a regular file;
2. reads at most ``cap + 1`` bytes (:func:`read_capped`), so a file that grows while being read, or a
   ``/proc`` file whose size is 0, is still bounded, and refuses a file over the cap by its size first;
3. turns every ``OSError`` into one :class:`~qemu_evmcs.core.errors.InputError` naming the file.

Streaming readers (the fleet loader's multi-document files) take :func:`open_regular` and apply their own
per-document cap while streaming.
"""

from __future__ import annotations

import os
import stat
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core.errors import InputError

if TYPE_CHECKING:
    from typing import BinaryIO

#: The default cap of one input file (a host profile, a dump, a definition): 4 MiB.
MAX_INPUT_BYTES = 4 * 1024 * 1024


def describe_mode(mode: int) -> str:
    """``st_mode`` as words for a message: ``a symbolic link``, ``a character device``, ..."""
    for test, words in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
                        (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                        (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return words
    return "not a regular file"


def open_regular(path: str) -> BinaryIO:
    """Open ``path`` for binary reading if (what it points to) is a regular file.

    :raise InputError: missing, unreadable, a directory (``is a directory, expected a file``), a device,
        a FIFO or a socket.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except IsADirectoryError:
        raise InputError("is a directory, expected a file", file=path) from None
    except OSError as err:
        raise InputError(err.strerror or str(err), file=path) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InputError("is a directory, expected a file", file=path)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"is {describe_mode(st.st_mode)}, not a regular file; refusing to read it", file=path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def is_database(path: str | os.PathLike[str]) -> bool:
    """Is ``path`` an existing SQLite file (by its 16-byte header): a fleet inventory, not a host profile?

    Here, with the readers, rather than with the inventory code (``fleet/inventory.py``): every command that
    takes hosts asks it of each argument, and most never open an inventory, so they need not import it.
    """
    try:
        with open_regular(os.fspath(path)) as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except (InputError, OSError):
        return False


def read_capped(path: str, cap: int = MAX_INPUT_BYTES, *, what: str = "inputs") -> bytes:
    """The bytes of regular file ``path``, refusing more than ``cap`` of them.

    :param what: the plural noun of the message (``host profiles are limited to N bytes``).
    :raise InputError: see :func:`open_regular`; or the file is larger than ``cap``.
    """
    with open_regular(path) as fh:
        try:
            size = os.fstat(fh.fileno()).st_size
            if size > cap:
                raise InputError(f"file is {size} bytes; {what} are limited to {cap}", file=path)
            data = fh.read(cap + 1)
        except OSError as err:
            raise InputError(err.strerror or str(err), file=path) from None
    if len(data) > cap:
        raise InputError(f"file is more than {cap} bytes; {what} are limited to {cap}", file=path)
    return data


def decode_utf8(data: bytes, path: str) -> str:
    """``data`` as UTF-8 text, or one error line with the offending byte's offset."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"not UTF-8 text ({err.reason} at byte {err.start})", file=path) from None


def read_text_capped(path: str, cap: int = MAX_INPUT_BYTES, *, what: str = "inputs") -> str:
    """:func:`read_capped` decoded as UTF-8 (:func:`decode_utf8`)."""
    return decode_utf8(read_capped(path, cap, what=what), path)
