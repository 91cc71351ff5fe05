"""Process and resource accounting from /proc, shared by the launch, fault and load tests.

Why one module: ``fault_helpers`` and ``launch_helpers`` each carried a copy of the /proc readers (and
``test_launch_qemu`` one of ``read_until``). Standard library only, like ``fault_helpers``' fake emulator.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Callable


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a reaped child has no /proc entry)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def pid_exists(pid: int) -> bool:
    """True if /proc still has the pid at all (zombie included): an unreaped child shows up here."""
    return os.path.exists(f"/proc/{pid}")


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process in /proc (processes that vanish while read are skipped)."""
    parent: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(name)] = int(fields[1])
    return parent


def children_of(ppid: int) -> list[int]:
    """Pids whose parent is ``ppid`` (from /proc)."""
    return [pid for pid, pp in _parents().items() if pp == ppid]


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (from /proc)."""
    parent = _parents()
    out: list[int] = []
    frontier = [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out.extend(kids)
        frontier.extend(kids)
    return out


def _wait_until(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.02)
    return done()


def wait_gone(pid: int, timeout: float = 5.0) -> bool:
    """Wait (bounded) until /proc has no ``pid`` at all: it exited and was reaped."""
    return _wait_until(lambda: not pid_exists(pid), timeout)


def wait_dead(pid: int, timeout: float = 5.0) -> bool:
    """Wait (bounded) until ``pid`` is gone or a zombie someone else must reap."""
    return _wait_until(lambda: not pid_alive(pid), timeout)


def read_until(proc: subprocess.Popen[bytes], needle: bytes, timeout: float) -> bytes:
    """Read ``proc``'s stderr until ``needle`` appears (bounded); returns what was read."""
    assert proc.stderr is not None
    buf = b""
    deadline = time.monotonic() + timeout
    fd = proc.stderr.fileno()
    while needle not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timeout waiting for {needle!r}; got {buf.decode(errors='replace')[-2000:]}")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"EOF before {needle!r}; got {buf.decode(errors='replace')[-2000:]}")
            buf += chunk
    return buf


def open_fds() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def rss_kib(pid: int | str = "self") -> int:
    """Resident set size of ``pid`` in KiB (0 when /proc does not say)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
