"""Process and resource accounting from /proc, shared by the launch, fault and load tests.

Why one module: ``fault_helpers`` and ``launch_helpers`` each carried a copy of the /proc readers (and
``test_launch_qemu`` one of ``read_until``). Standard library only, like ``fault_helpers``' fake emulator.
"""

from __future__ import annotations

import asyncio
import gc
import os
import select
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Callable
from types import TracebackType

#: How long a wait for something that must happen may take: generous, because other jobs may share the 2 cores
#: here and a Python child can take seconds to start at load 10. It never makes a passing test slower (the
#: waits end on the event); it only turns a test that would hang into one that fails.
PATIENCE = 120.0


def race(action: Callable[[], object], threads: int) -> list[BaseException]:
    """Run ``action`` in ``threads`` threads released at once by a barrier; what each raised (none: ``[]``).

    Why: the concurrency tests (first imports into a new database, parse-cache prunes) all ask "do N callers
    at the same instant ever fail?"; BaseException is collected too, since that is the point of asking.
    """
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def one() -> None:
        start.wait()
        try:
            action()
        except BaseException as err:  # noqa: BLE001 - collected for the caller to assert on
            errors.append(err)

    workers = [threading.Thread(target=one) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return errors


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


def wait_until(done: Callable[[], bool], timeout: float = PATIENCE) -> bool:
    """Poll ``done`` until it holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.02)
    return done()


def wait_gone(pid: int, timeout: float = PATIENCE) -> bool:
    """Wait (bounded) until /proc has no ``pid`` at all: it exited and was reaped."""
    return wait_until(lambda: not pid_exists(pid), timeout)


def wait_dead(pid: int, timeout: float = PATIENCE) -> bool:
    """Wait (bounded) until ``pid`` is gone or a zombie someone else must reap."""
    return wait_until(lambda: not pid_alive(pid), timeout)


def unix_listening(path: str) -> bool:
    """True once a socket bound to ``path`` is listening (from /proc/net/unix: flag __SO_ACCEPTCON).

    Not "the path exists": bind() creates the path a moment before listen(), and a connect in between is
    refused (at load 5 that is what failed). Reading /proc does not connect, so it is safe for sockets
    where a probing connection would mean something (a migration stream).
    """
    try:
        with open("/proc/net/unix") as fh:
            next(fh)
            for line in fh:
                fields = line.split()
                if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & 0x10000:
                    return True
    except OSError:
        pass
    return False


async def async_wait_until(done: Callable[[], bool], what: str, timeout: float = PATIENCE) -> None:
    """Poll ``done`` from a coroutine until it holds; fail naming ``what`` after ``timeout`` (a hang guard)."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.01)


def read_until(proc: subprocess.Popen[bytes], needle: bytes, timeout: float = PATIENCE) -> bytes:
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


class LeakCounter:
    """What a block leaves behind in this process, counted exactly: descriptors, child processes, and the
    memory Python allocated (tracemalloc: exact bytes; a leaked ``bytes(1 << 20)`` per launch grew RSS by
    only 1.3 MiB over 10 launches, untouched pages being free); RSS is kept as a coarse check for the rest.
    Measured without a leak over 10-20 simulator launches: +0 descriptors, +8 KiB Python, +4 KiB RSS.

    ``with LeakCounter() as leaks: <N repetitions>`` then ``leaks.check(N)``: no new descriptor or child,
    Python memory grown by less than ``per_rep_kib`` per repetition, RSS by less than ``rss_kib`` in all.
    """

    def __init__(self) -> None:
        self.fds0 = self.fds1 = 0
        self.kids0: list[int] = []
        self.kids1: list[int] = []
        self.rss0 = self.rss1 = self.py0 = self.py1 = 0
        self._was_tracing = False

    def __enter__(self) -> LeakCounter:
        self._was_tracing = tracemalloc.is_tracing()
        if not self._was_tracing:
            tracemalloc.start()
        gc.collect()
        self.fds0, self.kids0, self.rss0 = open_fds(), descendants(os.getpid()), rss_kib()
        self.py0 = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        gc.collect()
        self.fds1, self.kids1, self.rss1 = open_fds(), descendants(os.getpid()), rss_kib()
        self.py1 = tracemalloc.get_traced_memory()[0]
        if not self._was_tracing:
            tracemalloc.stop()

    def check(self, reps: int, per_rep_kib: int = 256, rss_bound_kib: int = 8 * 1024) -> None:
        """Assert nothing leaked over ``reps`` repetitions (see the class docstring)."""
        assert self.kids1 == self.kids0 == [], (self.kids0, self.kids1)
        assert self.fds1 <= self.fds0, ("descriptors", self.fds0, self.fds1)
        assert self.py1 - self.py0 < reps * per_rep_kib * 1024, ("Python bytes", self.py0, self.py1)
        assert self.rss1 - self.rss0 < rss_bound_kib, ("RSS KiB", self.rss0, self.rss1)
