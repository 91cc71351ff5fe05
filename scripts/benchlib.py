"""Shared helpers of the ``scripts/bench-*`` benchmarks: a byte-compiled copy of the package, timed runs.

Why a byte-compiled copy: ``pip install .`` byte-compiles every module it installs, so an installed
``qemu-evmcs`` starts from ``.pyc`` files. The development setup (``PYTHONPATH`` on the checkout, run under
``PYTHONDONTWRITEBYTECODE=1`` as on the build machines) compiles every imported module from source at each
start, which costs start-up time an installed copy never pays. The benchmarks therefore copy
``qemu_evmcs/`` to a temporary directory and byte-compile it there (``compileall``, what pip runs after
copying the files), and run it from that copy with ``PYTHONPATH``. ``--source`` measures the checkout
as it is instead (and says so).

Why medians of interleaved runs and CPU time next to wall time: the build machine is shared (other
jobs run on its 2 cores); every figure is a median, the load average is printed before and after, and
CPU time (user + system of the child) is reported beside wall time because it moves much less with the
load than wall time does.
"""

from __future__ import annotations

import compileall
import os
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:     # the scripts' own helpers (make-fleet's fleet reading) use the checkout
    sys.path.insert(1, ROOT)


def byte_compiled_copy(tmp: str) -> str:
    """Copy ``qemu_evmcs/`` under ``tmp`` and byte-compile it (like ``pip install .``); returns the directory
    to put on ``PYTHONPATH``."""
    dest = os.path.join(tmp, "site")
    shutil.copytree(os.path.join(ROOT, "qemu_evmcs"), os.path.join(dest, "qemu_evmcs"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if not compileall.compile_dir(os.path.join(dest, "qemu_evmcs"), quiet=1):
        raise SystemExit("error: byte-compiling the package copy failed")
    return dest


def package_path(source: bool, tmp: str) -> tuple[str, str]:
    """(``PYTHONPATH`` to run with, what it is) for ``--source`` or the byte-compiled default."""
    if source:
        return ROOT, "the checkout, compiled from source at each start (PYTHONDONTWRITEBYTECODE=1)"
    return byte_compiled_copy(tmp), "a byte-compiled copy of the package (what `pip install .` gives)"


def child_env(pythonpath: str, source: bool) -> dict[str, str]:
    """The environment of a measured child: ``PYTHONPATH``; no byte-code writing for ``--source``."""
    env = dict(os.environ, PYTHONPATH=pythonpath)
    if source:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@dataclass
class Timing:
    """Medians of several runs of one command."""

    wall: float
    cpu: float
    runs: int


def child_cwd(tmp: str) -> str:
    """The working directory of every measured child: an empty directory under ``tmp``.

    Why: ``python -m`` and ``python -c`` put the working directory first on ``sys.path``, ahead of
    ``PYTHONPATH``; run from the checkout (as the scripts are), a child would import the checkout's
    ``qemu_evmcs`` (compiled from source at each start under ``PYTHONDONTWRITEBYTECODE=1``) instead of the
    byte-compiled copy, which is what the figures before this fix silently measured.
    """
    cwd = os.path.join(tmp, "cwd")
    os.makedirs(cwd, exist_ok=True)
    return cwd


def run_timed(argv: Sequence[str], env: dict[str, str], *, check: bool = True,
              cwd: str | None = None) -> tuple[float, float, str]:
    """(wall seconds, child CPU seconds, stdout) of one run (in ``cwd``: see :func:`child_cwd`)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(list(argv), env=env, capture_output=True, text=True, check=False, cwd=cwd)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if check and out.returncode not in (0, 1):
        raise SystemExit(f"error: {' '.join(argv)} exited {out.returncode}: {out.stderr.strip()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, out.stdout


#: What the launch wrapper prints on stderr once QEMU is verified ("QMP ready and verified").
WRAPPER_DONE = b"requested vmx/hv options applied"


def until_stderr(argv: Sequence[str], marker: bytes, env: dict[str, str], *, cwd: str | None = None,
                 timeout: float = 60.0) -> float:
    """Seconds from spawning ``argv`` to ``marker`` on its stderr (the launch wrapper's :data:`WRAPPER_DONE`);
    then SIGTERM, and kill after 30 s."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    buf = b""
    try:
        while marker not in buf:
            ready, _, _ = select.select([proc.stderr], [], [], timeout)
            chunk = os.read(proc.stderr.fileno(), 65536) if ready else b""
            if not chunk:
                raise SystemExit(f"error: {' '.join(argv)} printed no {marker.decode()!r}: "
                                 f"{buf.decode(errors='replace')[-500:]}")
            buf += chunk
        return time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def medians(samples: Sequence[tuple[float, float]]) -> Timing:
    """Median wall and median CPU of ``(wall, cpu)`` samples."""
    return Timing(statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples), len(samples))


def load_average() -> str:
    """The 1/5/15-minute load averages, for the report."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def python() -> str:
    """The interpreter every side is run with (the floor ``python -c pass`` uses the same one)."""
    return sys.executable


def floor_note(env: dict[str, str], cwd: str) -> str | None:
    """A warning when this interpreter's own start imports ``re``, ``enum`` or ``pathlib`` (a ``.pth`` file of
    site-packages does: an editable install's finder), else ``None``. Such a floor is inflated (``python -c
    pass`` was 41.6 ms instead of 19.0 ms in one venv), and so every ratio to it looks better than it is."""
    probe = "import sys; print(' '.join(m for m in ('re', 'enum', 'pathlib') if m in sys.modules))"
    out = subprocess.run([python(), "-c", probe], env=env, cwd=cwd, capture_output=True, text=True, check=True)
    found = out.stdout.strip()
    return (f"# WARNING: this interpreter imports {found} at every start (a .pth file in site-packages, e.g. an "
            "editable install): the floor is inflated; use a venv without the package installed") if found else None
