"""The emulator process: its private runtime directory, its start, and how its end is told.

Why apart from :mod:`.qmp`: the wrapper starts the emulator *before* it imports ``asyncio`` and ``qemu.qmp``
(about 45 ms of a start on the build machine), so that QEMU or the simulated QEMU (a second Python, 60 ms to
its greeting) starts while the wrapper loads its QMP client; :class:`~.qmp.EmulatorSession` then takes the
running process over. Nothing here imports ``asyncio``. Both ways of starting (the wrapper's early one and a
session's own :meth:`~.qmp.EmulatorSession.spawn`) go through :func:`spawn_emulator`: one model of the
start, its socket and its clean-up.
"""

from __future__ import annotations

import ctypes
import os
import signal
import stat
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from qemu_evmcs.core import lazy, stale
from qemu_evmcs.core.errors import InputError, LaunchError
from qemu_evmcs.core.typecheck import TYPE_CHECKING

if TYPE_CHECKING:
    import shutil
    import subprocess
    import tempfile
else:
    # This module runs before the emulator starts, so what it imports delays the start (core/lazy.py).
    # subprocess imports locale (and with it re) for text-mode pipes only; tempfile imports shutil (and with it
    # bz2, lzma, fnmatch) for TemporaryDirectory's clean-up only: 25 million instructions, a third of this
    # module's cost. shutil itself only removes a directory after a failed start.
    subprocess = lazy.module_deferring("subprocess", "locale")
    tempfile = lazy.module_deferring("tempfile", "shutil")
    shutil = lazy.proxy("shutil")

#: Longest path ``sun_path`` accepts on Linux (108 bytes including the NUL).
UNIX_PATH_MAX = 107

#: Name of the socket inside the private runtime directory.
SOCKET_NAME = "qmp.sock"

#: Name prefix of the private runtime directories (``qemu-evmcs-<random>``, owner file inside).
RUNTIME_PREFIX = "qemu-evmcs-"


def _socket_path_len(parent: str) -> int:
    """Bytes of the socket path a runtime directory in ``parent`` gives (``mkdtemp`` adds 8 characters)."""
    return len(os.path.join(parent, RUNTIME_PREFIX + "XXXXXXXX", SOCKET_NAME).encode())


def describe_status(returncode: int) -> str:
    """``exited with status N`` or ``was killed by signal N (SIGNAME)`` for a ``Popen`` return code."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "?"
        return f"was killed by signal {-returncode} ({name})"
    return f"exited with status {returncode}"


def shell_status(returncode: int) -> int:
    """The exit status a shell would report: the code itself, or 128+signal if killed by a signal."""
    return 128 - returncode if returncode < 0 else returncode


def check_runtime_parent(path: str) -> None:
    """Refuse a user-given runtime directory that another user could tamper with.

    The socket is created inside a fresh ``mkdtemp`` child (mode 0700), but if
    the parent is group/world-writable (without being a sticky ``/tmp``-like
    directory) or owned by someone else, another user could swap the child
    between creation and use.

    :raise InputError: the directory is missing, not a directory, owned by
        another user, or group/world-writable.
    """
    try:
        st = os.stat(path)
    except OSError as err:
        raise InputError(f"runtime directory {path}: {err.strerror}") from err
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"runtime directory {path}: not a directory")
    if st.st_uid != os.geteuid():
        raise InputError(f"runtime directory {path}: owned by uid {st.st_uid}, not by uid {os.geteuid()}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise InputError(f"runtime directory {path}: group- or world-writable (mode {stat.S_IMODE(st.st_mode):04o})")


def default_runtime_parent() -> str:
    """``$XDG_RUNTIME_DIR`` when it is usable and ours, else the system temp dir (``/tmp``)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        try:
            check_runtime_parent(xdg)
            return xdg
        except InputError:
            pass
    return tempfile.gettempdir()


def make_runtime_dir(runtime_parent: str | None) -> str:
    """Create the private 0700 directory (``mkdtemp``: mode and uniqueness), named after its owner.

    Leftovers of dead wrappers of this user in the same parent (a ``SIGKILL`` cannot be cleaned up after)
    are swept first (:mod:`qemu_evmcs.core.stale`). When the default parent (``$XDG_RUNTIME_DIR``) is
    too long for a unix socket path (107 bytes), the system temp dir is used instead, as when
    ``$XDG_RUNTIME_DIR`` is unset; a parent given explicitly (``runtime_parent``) is never replaced.

    :raise InputError: the parent is unusable or too long.
    """
    if runtime_parent is not None:
        check_runtime_parent(runtime_parent)
        parents = [runtime_parent]
    else:
        parents = list(dict.fromkeys([default_runtime_parent(), tempfile.gettempdir()]))
    parent = parents[0]
    for parent in parents:
        if _socket_path_len(parent) <= UNIX_PATH_MAX:
            break
    else:
        raise InputError(f"runtime directory {parent}: too long for a unix socket path "
                         f"({_socket_path_len(parent)} > {UNIX_PATH_MAX})")
    stale.sweep(parent, RUNTIME_PREFIX)
    try:
        path = stale.make_owned_dir(parent, RUNTIME_PREFIX)
    except OSError as err:
        raise InputError(f"runtime directory {parent}: {err.strerror}") from err
    os.chmod(path, 0o700)
    return path


def _pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGKILL the emulator if the launching thread dies (e.g. the wrapper is SIGKILLed).

    Without it a ``kill -9`` of the wrapper would leave a running, unmanaged QEMU.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


@dataclass
class Spawned:
    """A started emulator that nothing watches yet: the process, the read end of its stderr pipe, and its
    private runtime directory with the QMP socket's path. An :class:`~.qmp.EmulatorSession` takes it over
    (``spawned=``) and from then on owns all of it; until then :meth:`abandon` is the clean-up."""

    #: The command line as given (without the private ``-qmp``).
    argv: list[str]
    popen: subprocess.Popen[bytes]
    stderr_fd: int
    runtime_dir: str
    socket_path: str
    #: ``time.monotonic()`` just before the start: the QMP timeout counts from here.
    t0: float
    #: A session took it over (and cleans up after it from then on).
    taken: bool = False

    def abandon(self, term_timeout: float = 3.0) -> None:
        """Stop (SIGTERM, then SIGKILL after ``term_timeout`` seconds), reap, close the pipe, remove the
        directory: for a failure between the start and a session taking the process over."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(term_timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        os.close(self.stderr_fd)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


def spawn_emulator(argv: Sequence[str], *, runtime_parent: str | None = None,
                   pass_fds: Sequence[int] = ()) -> Spawned:
    """Create the runtime directory and start ``argv`` plus ``-qmp unix:<dir>/qmp.sock,server=on,wait=off``.

    stdin and stdout are inherited; stderr goes to a pipe of ours (not ``asyncio.subprocess.PIPE``: a session
    polls its read end, without consuming it, to know whether everything QEMU wrote before its greeting has
    been read). ``pass_fds`` reach the emulator under the same numbers, every other descriptor of ours is
    closed there. Nothing is left behind when the start fails.

    :raise InputError: bad runtime directory.
    :raise LaunchError: the program cannot be executed.
    """
    runtime_dir = make_runtime_dir(runtime_parent)
    socket_path = os.path.join(runtime_dir, SOCKET_NAME)
    full = [*argv, "-qmp", f"unix:{socket_path},server=on,wait=off"]
    t0 = time.monotonic()
    rfd, wfd = os.pipe()
    try:
        popen = subprocess.Popen(full, stdin=None, stdout=None, stderr=wfd, pass_fds=tuple(pass_fds),
                                 preexec_fn=_pdeathsig if sys.platform.startswith("linux") else None)
    except BaseException as err:
        os.close(rfd)
        shutil.rmtree(runtime_dir, ignore_errors=True)
        if isinstance(err, OSError):
            raise LaunchError(f"cannot run {argv[0]}: {err.strerror}", layer="qemu") from err
        raise
    finally:
        os.close(wfd)
    return Spawned(list(argv), popen, rfd, runtime_dir, socket_path, t0)
