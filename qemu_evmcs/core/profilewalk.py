"""The one walk of a profile directory: which files a command reads from a directory, in which order.

Why one: a directory is read by every command that takes hosts (through the fleet loader), by
``fleet import`` (streamed: 100,000 files), and by :func:`~qemu_evmcs.core.profile.iter_profiles`; when each
listed directories its own way, a symbolic link back to a parent ended in ELOOP in one of them while the
others loaded the file once. The rule: ``*.yaml``/``*.yml`` files, sorted by name; a directory whose name ends
so is walked in its place (a pool kept as a directory); other sub-directories are not (``subdir_hint`` says
so in the error); a directory reached again through a symbolic link is not walked twice.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from qemu_evmcs.core.errors import InputError


def profile_files(path: str) -> list[str]:
    """Profile files under the directory ``path``, in the order they are read (the module doc's rule)."""
    return [full for _, full in sorted(walk_profile_files(path))]


def walk_profile_files(path: str) -> Iterator[tuple[bytes, str]]:
    """The files of :func:`profile_files`, streamed in the order the directories list them: nothing per file is
    kept here, so a directory of 100,000 host files costs no memory (``fleet import`` sorts them on disk,
    :mod:`~qemu_evmcs.fleet.staging`). Each comes with its sort key: the names from ``path`` down, as bytes
    joined by NUL, so sorting the keys gives :func:`profile_files`' order (a directory's files at its name's
    place; NUL sorts before every character of a name). Directories are those ending in ``.yaml``/``.yml``;
    one reached again through a symbolic link is not walked twice.
    """
    todo: list[tuple[str, bytes]] = [(path, b"")]
    walked: set[tuple[int, int]] = set()           # (device, inode) of each directory walked: per directory only
    while todo:
        where, prefix = todo.pop()
        sep = "" if where.endswith(os.sep) else os.sep
        try:
            st = os.stat(where)
            if (st.st_dev, st.st_ino) in walked:
                continue
            walked.add((st.st_dev, st.st_ino))
            with os.scandir(where) as it:
                for e in it:
                    name = e.name
                    if not name.endswith((".yaml", ".yml")):
                        continue
                    key = prefix + os.fsencode(name)
                    if e.is_dir():
                        todo.append((where + sep + name, key + b"\0"))
                    else:
                        yield key, where + sep + name
        except OSError as err:
            raise InputError(err.strerror or str(err), file=where) from None


def subdir_hint(paths: Sequence[str]) -> str:
    """For "no host profiles found": a given directory holds only sub-directories (``make-fleet --by-pool``),
    which are not searched."""
    for p in paths:
        if os.path.isdir(p):
            try:
                subdirs = sorted(e.name for e in os.scandir(p) if e.is_dir() and not e.name.endswith((".yaml", ".yml")))
            except OSError:
                continue
            if subdirs:
                return (f" (only *.yaml files directly in {p} are read, not its sub-directories such as "
                        f"{os.path.join(p, subdirs[0])}: pass them, e.g. {os.path.join(p, '*', '')})")
    return ""
