"""Private working directories that name their owner, and the sweep of those whose owner is dead.

Why: ``SIGKILL`` cannot be caught, so a killed ``qemu-evmcs-launch`` leaves its runtime directory (and a
stale QMP socket) behind, and a killed ``make-fleet`` its hidden build directory (393 MB in the issue's
reproduction). Nothing else will ever remove them. So such directories get an :data:`OWNER_FILE` inside,
``<pid> <start>``, where ``<start>`` is the process start time from ``/proc/<pid>/stat`` (field 22, clock
ticks since boot; it tells a live owner from a new process that reused the pid). The name is left as it
was (a QMP socket path must stay under 108 bytes). The next run sweeps, in the same parent directory,
every ``PREFIX*`` entry that:

- is a real directory (``lstat``: never a symlink) owned by the same user (``st_uid``),
- holds a regular owner file (opened with ``O_NOFOLLOW``) that names a process that no longer runs
  (no ``/proc/<pid>``, or another start time).

Directories of live processes, of other users, or without an owner file (older versions, or one being
created this instant) are never touched. Removal uses :func:`shutil.rmtree`, which on Linux walks with
directory file descriptors and does not follow symlinks planted inside.
"""

from __future__ import annotations

import contextlib
import os
import stat

from qemu_evmcs.core import lazy
from qemu_evmcs.core.typecheck import TYPE_CHECKING

if TYPE_CHECKING:
    import shutil
    import tempfile
else:   # only when a directory is made or swept (a fleet staged, a stale one found): core/lazy.py
    shutil = lazy.proxy("shutil")
    tempfile = lazy.proxy("tempfile")

#: The owner file inside a swept directory: ``<pid> <start>\n``.
OWNER_FILE = ".owner"


def start_time(pid: int) -> int | None:
    """Process ``pid``'s start time (``/proc/<pid>/stat`` field 22), or ``None`` if it does not run."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read(4096)
    except OSError:
        return None
    fields = data.rpartition(b")")[2].split()  # the command name (field 2) may hold spaces and parens
    try:
        return int(fields[19])  # fields after ")" start at field 3
    except (IndexError, ValueError):
        return None


def make_owned_dir(parent: str, prefix: str) -> str:
    """``mkdtemp`` (mode 0700, unique) named ``PREFIX<random>`` in ``parent``, with our owner file.

    :raise OSError: as :func:`tempfile.mkdtemp`, or the owner file cannot be written (the directory is
        removed again).
    """
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        pid = os.getpid()
        fd = os.open(os.path.join(path, OWNER_FILE), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{pid} {start_time(pid) or 0}\n")
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path


def owner_alive(path: str) -> bool | None:
    """Whether the owner named in ``path``'s owner file still runs; ``None`` without a readable one."""
    try:
        fd = os.open(os.path.join(path, OWNER_FILE), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        fields = os.read(fd, 64).split()
    finally:
        os.close(fd)
    try:
        pid, start = int(fields[0]), int(fields[1])
    except (IndexError, ValueError):
        return None
    now = start_time(pid)
    return now is not None and (start == 0 or now == start)


def sweep(parent: str, prefix: str) -> list[str]:
    """Remove this user's ``PREFIX*`` directories in ``parent`` whose owner is dead.

    Best effort (a directory that cannot be listed or removed is left); returns the paths removed.
    """
    removed: list[str] = []
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(prefix)]
    except OSError:
        return removed
    uid = os.geteuid()
    for entry in entries:
        with contextlib.suppress(OSError):
            st = os.lstat(entry.path)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or owner_alive(entry.path) is not False:
                continue
            shutil.rmtree(entry.path)
            removed.append(entry.path)
    return removed
