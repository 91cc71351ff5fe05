"""Descriptors the wrapper inherited, to be handed to the emulator under the same numbers.

Why: libvirt opens the monitor socket itself and starts QEMU with ``-chardev socket,fd=23,...`` (likewise tap
devices, disk images, the log pipe). A wrapper that spawns QEMU with :mod:`subprocess`'s default
``close_fds=True`` closes all of them, and QEMU fails with ``File descriptor '23' is not a socket``.

What counts as inherited: every descriptor above 2 that is open and *inheritable* (no ``FD_CLOEXEC``) when
the wrapper starts. Python creates all of its own descriptors non-inheritable (PEP 446), so the ones left are
exactly what the parent passed on purpose; the wrapper's own pipes, sockets and files never reach QEMU.

The wrapper keeps its own copies open while the emulator runs: libvirt's pid file (inherited locked, fd 5
under libvirt 9.0) names the wrapper's pid, and an ``fcntl`` lock is released by closing *any* descriptor of
the file, so closing ours would drop the lock libvirt took for the process it started.
"""

from __future__ import annotations

import os

_FD_DIR = "/proc/self/fd"


def inherited_fds() -> tuple[int, ...]:
    """Open, inheritable descriptors above 2, in order; call before opening anything."""
    try:
        names = os.listdir(_FD_DIR)
    except OSError:
        return ()
    found = []
    for name in names:
        if not name.isdigit():
            continue
        fd = int(name)
        if fd <= 2:
            continue
        try:
            if os.get_inheritable(fd):
                found.append(fd)
        except OSError:
            continue  # the descriptor listdir() itself used, closed by now
    return tuple(sorted(found))
