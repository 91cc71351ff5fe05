"""Atomic file output: the one implementation behind every file qemu-evmcs writes.

Every writer (``host import|show --out``, ``qemu-evmcs-launch --report-json``, ``qemu-evmcs report``,
``scripts/make-fleet``) used to carry its own copy of the same dance; the copies had already drifted
(one fsynced, one did not). The dance, once:

1. ``mkstemp`` in the target's own directory (``O_EXCL`` and a random name, never a predictable
   ``FILE.tmpPID`` that another user of a shared directory could plant as a symlink; the same directory
   so that the rename cannot cross file systems);
2. write, flush and ``fsync`` (the rename must not publish an empty file after a crash);
3. optionally ``chmod`` (``mkstemp`` creates mode 0600: private unless the caller asks otherwise);
4. ``os.replace`` over the target, so a reader sees the old file or the new one, never half of one;
5. on any failure, even KeyboardInterrupt, remove the temporary file and re-raise.

The refusal policies (overwrite only with ``--force``, the error wording) stay with the callers, which
differ on purpose; :func:`write_text_file` is the one shared by ``host`` and the launcher.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from typing import TextIO

from qemu_evmcs.core.errors import InputError

#: What :func:`replace_file` writes: the text itself, or a function that writes it to the open file.
Content = str | Callable[[TextIO], object]


def replace_file(path: str, content: Content, *, prefix: str, mode: int | None = None) -> None:
    """Write ``content`` to ``path`` atomically (see the module docstring for the steps).

    :param prefix: the temporary file's name prefix (a leading dot keeps it out of ``ls`` and globs).
    :param mode: permission bits for the new file; None keeps ``mkstemp``'s 0600.
    :raise OSError: the temporary file cannot be created, written or renamed (it is removed first).
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
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text_file(path: str, text: str, *, force: bool = False) -> None:
    """Write ``text`` to ``path`` with :func:`replace_file`, refusing to replace anything without ``force``.

    A dangling symlink counts as existing (``lexists``). The file keeps ``mkstemp``'s private mode 0600.

    :raise InputError: if ``path`` exists and ``force`` is false, or the directory is not writable.
    """
    if os.path.lexists(path) and not force:
        raise InputError("already exists; pass --force to overwrite", file=path)
    try:
        replace_file(path, text, prefix=".qemu-evmcs-")
    except OSError as err:
        raise InputError(f"cannot write: {err.strerror or err}", file=path) from None
