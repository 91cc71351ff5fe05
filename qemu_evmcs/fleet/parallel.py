"""Fleet loading on every core: large inputs cut on document boundaries, parts loaded by forked processes.

Why: reading is the part of a fleet command that grows with the number of hosts. From 16 MiB of YAML or
4,000 files, the input is cut into one part per usable CPU (at most 4; ``QEMU_EVMCS_LOAD_WORKERS`` overrides)
on ``---`` lines (or between files); the calling process loads the first part while ``os.fork``-ed children
load the others with their own :class:`~qemu_evmcs.fleet.loader.FleetLoader` and send back (pickled) their
members and representatives. They are merged in input order, so the fleet is identical to a one-process load:
same host order, same first-seen representative. If a child fails (bad input) or host names repeat across
parts, the later parts are loaded again in the calling process, so errors (file, line, message) are exactly
those of a one-process load. Forking is skipped when other threads run.
"""

from __future__ import annotations

import os
import sys
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.fleet.loader import CHUNK_BYTES, FleetLoader
from qemu_evmcs.output.progress import Progress
from qemu_evmcs.core import lazy

if TYPE_CHECKING:
    from typing import Any
    import pickle
    import signal
else:   # only a load that forks (16 MiB of YAML or more) pickles its parts and sets signals
    pickle = lazy.proxy("pickle")   # (core/lazy.py)
    signal = lazy.proxy("signal")

#: Split the loading over several processes (``os.fork``) from this many bytes of multi-document files ...
PARALLEL_MIN_BYTES = 16 * 1024 * 1024
#: ... or this many files.
PARALLEL_MIN_FILES = 4000
#: At most this many loading processes (the calling one included).
MAX_WORKERS = 4

#: A piece of input: (path, first byte, end byte or ``None`` for the end of the file).
Unit = tuple[str, int, "int | None"]


def default_workers() -> int:
    """Loading processes to use: ``QEMU_EVMCS_LOAD_WORKERS`` if set, else the usable CPUs (at most 4)."""
    env = os.environ.get("QEMU_EVMCS_LOAD_WORKERS", "").strip()
    if env.isdigit() and int(env) > 0:
        return min(int(env), 16)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORKERS))


def can_fork() -> bool:
    """Forking is safe only from a single-threaded process (a forked thread's locks stay held).

    A process that never imported :mod:`threading` has no thread it knows of (``active_count()`` would be 1),
    so it is not imported to ask: that import was 4 million instructions of a three-host ``negotiate``.
    """
    threads = sys.modules.get("threading")
    return hasattr(os, "fork") and (threads is None or threads.active_count() == 1)


def doc_boundary(path: str, offset: int, size: int) -> int:
    """The first ``---`` line at or after ``offset`` (its byte offset), not after a ``%`` directive line;
    ``size`` when there is none."""
    with open(path, "rb") as fh:
        pos = max(0, offset - 1)
        fh.seek(pos)
        tail = b""
        while pos < size:
            block = fh.read(CHUNK_BYTES)
            if not block:
                break
            buf = tail + block
            base = pos - len(tail)
            i = buf.find(b"\n---\n")
            while i >= 0:
                line_start = buf.rfind(b"\n", 0, i) + 1
                if line_start > 0 or base == 0:
                    if not buf.startswith(b"%", line_start):
                        return base + i + 1
                i = buf.find(b"\n---\n", i + 1)
            pos += len(block)
            tail = buf[-(4 + 4096):]       # a "\n---\n" across blocks, and the line before it
    return size


def split_units(units: list[Unit], parts: int) -> list[list[Unit]]:
    """Cut ``units`` into up to ``parts`` consecutive pieces of about equal work, on document boundaries."""
    if parts < 2:
        return [units]
    if len(units) >= PARALLEL_MIN_FILES:        # many files: by count
        step = -(-len(units) // parts)
        return [units[i:i + step] for i in range(0, len(units), step)]
    sizes: list[int] = []
    for path, _, _ in units:
        try:
            sizes.append(os.path.getsize(path))
        except OSError:
            return [units]          # let the sequential loader report it, in order
    total = sum(sizes)
    if total < PARALLEL_MIN_BYTES:
        return [units]
    out: list[list[Unit]] = [[]]
    acc = 0
    goal = total / parts
    for (path, _, _), size in zip(units, sizes, strict=True):
        start = 0
        while len(out) < parts and acc + (size - start) > goal * len(out):
            want = int(goal * len(out) - acc) + start
            cut = doc_boundary(path, want, size) if want > 0 else 0
            if cut >= size:
                break
            if cut > start:
                out[-1].append((path, start, cut))
            acc += cut - start
            start = cut
            out.append([])
        out[-1].append((path, start, None))
        acc += size - start
    return [p for p in out if p]


def run_units(loader: FleetLoader, units: list[Unit], tick: Progress | None) -> None:
    for path, start, end in units:
        loader.add_file(path, start, end)
        if tick is not None:
            tick.update(1)


def _child(units: list[Unit], wfd: int) -> None:  # pragma: no cover - runs in a forked process
    """Load ``units`` with a fresh loader and send (members, distinct, documents, parsed) down ``wfd``;
    on any error send nothing (the parent then loads them itself and reports the error exactly)."""
    try:
        payload = b""
        try:
            sub = FleetLoader()
            sub.collect = False
            run_units(sub, units, None)
            payload = pickle.dumps((sub.fleet.members, sub.fleet.distinct, sub.documents, sub.parsed),
                                   protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException:
            payload = b""
        with os.fdopen(wfd, "wb") as out:
            out.write(payload)
    finally:
        os._exit(0)


def load_parallel(loader: FleetLoader, parts: list[list[Unit]], tick: Progress | None) -> None:
    """Load ``parts[0]`` here and every other part in a forked child, then merge in input order.

    The result is exactly the sequential one: members keep load order, each fingerprint's representative is
    its first host, and when a child failed (bad input) or host names repeat across parts, the parts after
    the first are loaded here, sequentially, so the error is reported exactly as without parallelism.
    """
    children: list[tuple[int, int]] = []
    try:
        for part in parts[1:]:
            rfd, wfd = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                os.close(rfd)
                for _, r in children:
                    os.close(r)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _child(part, wfd)
            os.close(wfd)
            children.append((pid, rfd))
        run_units(loader, parts[0], tick)
        results: list[Any] = []
        while children:
            pid, rfd = children[0]
            chunks: list[bytes] = []
            while True:
                b = os.read(rfd, 1 << 20)
                if not b:
                    break
                chunks.append(b)
            os.close(rfd)
            os.waitpid(pid, 0)
            children.pop(0)
            results.append(pickle.loads(b"".join(chunks)) if chunks else None)
    finally:
        for pid, rfd in children:       # an error or interrupt here: stop the other loaders
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:  # pragma: no cover
                pass
            os.close(rfd)
    seen: set[str] = set()
    where = loader._where
    ok = True
    for res in results:
        if res is None:
            ok = False
            break
        for names in res[0].values():
            if not (where.keys().isdisjoint(names) and seen.isdisjoint(names)):
                ok = False
                break
            seen.update(names)
        if not ok:
            break
    if not ok:
        if tick is not None:
            tick.scale = 1.0
        for part in parts[1:]:
            run_units(loader, part, tick)
        return
    fleet = loader.fleet
    for part, (members, distinct, documents, parsed) in zip(parts[1:], results, strict=True):
        label = part[0][0]
        for fp, names in members.items():
            if fp not in fleet.distinct:
                fleet.distinct[fp] = distinct[fp]
            fleet.members.setdefault(fp, []).extend(names)
            where.update(dict.fromkeys(names, label))
        loader.documents += documents
        loader.parsed += parsed
