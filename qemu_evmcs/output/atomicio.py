"""Atomic file output: the one primitive behind every file qemu-evmcs writes.

Every writer (``host import|probe -o``, ``qemu-evmcs-launch --report-json``, ``qemu-evmcs report --out``,
``scripts/make-fleet``, and any later one) goes through :func:`write_output` (or, for a directory tree,
:func:`check_output_target` plus its own build-beside-and-rename). Why one primitive: the copies had
drifted, and one of them let ``--out /dev/null --force`` replace a device node (as root, that destroys
``/dev/null`` for the whole machine).

**What may be replaced** (:func:`check_output_target`, checked with ``lstat``, so never through a
symlink): nothing at all (absent), or a regular file when the caller passed ``--force``. A symlink (even
a dangling one: ``lexists``), a device node, a FIFO, a socket or a directory is refused, with or
without ``--force``: those are never what a user means to overwrite with a report.

**The write itself** (:func:`replace_file`):

1. ``mkstemp`` in the target's own directory (``O_EXCL`` and a random name, never a predictable
   ``FILE.tmpPID`` that another user of a shared directory could plant as a symlink; the same directory
   so that the rename cannot cross file systems);
2. write, flush and ``fsync`` (the rename must not publish an empty file after a crash);
3. ``chmod`` to the bits the file should have (``mkstemp`` creates 0600): the caller's ``mode`` if it
   gives one; else the replaced file's own bits; else what ``open(path, "w")`` would give a new file,
   0666 less the umask. Not 0600 by default: a host profile written as root
   (``host probe -o /etc/qemu-evmcs/host.yaml``) must stay readable to the QEMU user that libvirt runs
   ``qemu-evmcs-launch`` as, and ``--force`` must not quietly make a shared file private;
4. check the target again (it may have been swapped for a device or link meanwhile), then ``os.replace``
   over it, so a reader sees the old file or the new one, never half of one;
5. on any failure, even KeyboardInterrupt, remove the temporary file and re-raise.

**Errors**: :func:`write_output` turns every ``OSError`` (``ENOSPC``, ``EROFS``, ``EACCES``, a missing
directory) into one :class:`~qemu_evmcs.core.errors.InputError` naming the file (exit 2); the existing
file is left exactly as it was.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.inputfile import describe_mode

if TYPE_CHECKING:
    from typing import Literal, TextIO

    #: What :func:`replace_file` writes: the text itself, or a function that writes it to the open file.
    Content = str | Callable[[TextIO], object]

#: The message for an existing output without ``--force`` (tests and docs quote it).
EXISTS_MESSAGE = "already exists; pass --force to overwrite"


def check_output_target(path: str, *, force: bool, kind: Literal["file", "dir"] = "file") -> None:
    """Refuse an output path that must not be replaced (see the module docstring); call it before any work.

    :param kind: ``file`` (replaced by a regular file) or ``dir`` (a directory tree replaced as a whole;
        an empty existing directory needs no ``--force``).
    :raise InputError: the path is a symlink, a device, a FIFO, a socket, the wrong kind, or exists
        without ``force``; an empty path (an unset shell variable: it used to mean "here" or stdout).
    """
    if not path:
        raise InputError("empty path: name the output file or directory")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as err:
        raise InputError(f"cannot check the output: {err.strerror or err}", file=path) from None
    wanted = stat.S_ISREG if kind == "file" else stat.S_ISDIR
    if not wanted(st.st_mode):
        expected = "a regular file" if kind == "file" else "a directory"
        raise InputError(f"is {describe_mode(st.st_mode)}, not {expected}; refusing to replace it", file=path)
    if kind == "dir":
        try:
            if not os.listdir(path):
                return
        except OSError as err:
            raise InputError(f"cannot check the output: {err.strerror or err}", file=path) from None
    if not force:
        raise InputError(EXISTS_MESSAGE, file=path)


def _umask() -> int:
    """The process's umask, read without changing it (``/proc/self/status``, Linux 4.7+); else set and
    restore it, which is only racy against another thread creating files at that instant."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    old = os.umask(0o022)
    os.umask(old)
    return old


def _default_mode(path: str) -> int:
    """The bits of the regular file ``path`` replaces, else those ``open(path, "w")`` would create."""
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    return 0o666 & ~_umask()


def replace_file(path: str, content: Content, *, prefix: str, mode: int | None = None) -> None:
    """Write ``content`` to ``path`` atomically (see the module docstring for the steps).

    Low level: no ``--force`` policy (callers use :func:`write_output`), but it never replaces anything
    other than a regular file (step 4).

    :param prefix: the temporary file's name prefix (a leading dot keeps it out of ``ls`` and globs).
    :param mode: permission bits for the new file; None: those of the file it replaces, else 0666 less
        the umask (as a plain ``open(path, "w")``).
    :raise OSError: the temporary file cannot be created, written or renamed (it is removed first).
    :raise InputError: the target became something other than a regular file meanwhile.
    """
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            if isinstance(content, str):
                fh.write(content)
            else:
                content(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode if mode is not None else _default_mode(path))
        check_output_target(path, force=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_output(path: str, content: Content, *, force: bool, prefix: str = ".qemu-evmcs-",
                 mode: int | None = None) -> None:
    """The output primitive: check the target, write atomically, translate file-system errors.

    :param force: replace an existing regular file (never anything else).
    :param mode: permission bits (default: those of the replaced file, else 0666 less the umask).
    :raise InputError: refused target (:func:`check_output_target`) or a failed write
        (``cannot write: No space left on device``); the old file is untouched either way.
    """
    check_output_target(path, force=force)
    try:
        replace_file(path, content, prefix=prefix, mode=mode)
    except OSError as err:
        raise InputError(f"cannot write: {err.strerror or err}", file=path) from None


def write_text_file(path: str, text: str, *, force: bool = False) -> None:
    """:func:`write_output` of text with the default bits (the replaced file's, else 0666 less the umask):
    ``host import|probe -o`` and ``--report-json``."""
    write_output(path, text, force=force)
