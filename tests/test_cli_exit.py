"""How the ``qemu-evmcs`` process ends: its output, its exit code and its at-exit work, whatever stdout is.

Why: a command's answer is only delivered once stdout is flushed, and that can fail after the command
returned (a redirect to a full disk, a reader that went away). Python reports a failed final flush as
``Exception ignored ...`` with exit 120, and a failed ``print`` as a traceback; the CLI contract is one
``error:`` line and exit 2 (README "Exit codes": disk full). The process also leaves without the
interpreter's finalization (:func:`qemu_evmcs.cli.main.leave`), so these tests check that nothing a normal
exit does is lost: at-exit handlers run (the per-user cache is written), other threads are waited for.

Every case runs the real entry point (``python -m qemu_evmcs``) in a fresh process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from needs import unavailable

ROOT = Path(__file__).resolve().parent.parent


def _env(cache: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if cache is not None:
        env["QEMU_EVMCS_CACHE_DIR"] = str(cache)
    return env


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """``python -c CODE`` in a fresh interpreter on the checkout, output captured."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env())


def _run(argv: list[str], stdout: int, cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qemu_evmcs", *argv], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, timeout=120, env=_env(cache), cwd=ROOT)


@pytest.mark.parametrize("argv", [
    ["guest-msrs", "--host", "skylake-6.3"],            # about 9 KB: the failure comes from print itself
    ["guest-msrs", "--host", "skylake-6.3", "--json"],  # print_json's one write
    ["validate"],                                       # a few lines: the failure comes at the final flush
])
def test_a_full_disk_on_stdout_is_one_error_line_and_exit_2(argv: list[str]) -> None:
    if not os.path.exists("/dev/full"):
        unavailable("/dev/full is missing (a Linux device node; CI has it)")
    with open("/dev/full", "w") as full:
        proc = _run(argv, full.fileno())
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0] == "error: <stdout>: writing the output failed: No space left on device", lines


def test_a_reader_that_went_away_is_silent_and_keeps_the_commands_code() -> None:
    """``qemu-evmcs ... | head -0``: the reader closed the pipe before anything was written. Like ``grep`` or
    ``virsh``, the command says nothing more (stderr stays empty) and exits with its own answer's code."""
    r, w = os.pipe()
    os.close(r)
    try:
        proc = _run(["validate"], w)
    finally:
        os.close(w)
    assert proc.stderr == ""
    assert proc.returncode == 0


def test_at_exit_work_is_done(tmp_path: Path) -> None:
    """The per-user cache's compiled dataclass methods are written by an at-exit handler
    (:mod:`qemu_evmcs.core.classcache`): they are there after the first run."""
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    proc = _run(["guest-msrs", "--host", "skylake-6.3"], subprocess.DEVNULL, cache)
    assert proc.returncode == 0, proc.stderr
    names = os.listdir(cache)
    assert any(n.startswith("dataclass-code-") for n in names), names


def test_leave_waits_for_other_threads(tmp_path: Path) -> None:
    """A thread still running when the command returns is not cut off: ``leave`` then exits the normal way,
    which waits for it. The thread waits until the main thread is inside ``leave`` before writing."""
    done = tmp_path / "done"
    code = ("import sys, threading\n"
            "import qemu_evmcs.cli.main as m\n"
            "entered = threading.Event()\n"
            "def work():\n"
            "    entered.wait()\n"
            f"    open({str(done)!r}, 'w').write('finished')\n"
            "t = threading.Thread(target=work); t.start()\n"
            "orig = m.sys.stdout.flush\n"
            "def flush():\n"
            "    entered.set(); orig()\n"
            "m.sys.stdout.flush = flush\n"
            "m.leave(3)\n")
    proc = _python(code)
    assert proc.returncode == 3, proc.stderr
    assert done.read_text() == "finished"


def test_leave_keeps_the_code_and_flushes_both_streams() -> None:
    code = ("import sys\nimport qemu_evmcs.cli.main as m\n"
            "sys.stdout.write('answer'); sys.stderr.write('note')\n"
            "m.leave(1)\n")
    proc = _python(code)
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "answer", "note")


def test_the_installed_script_loads_the_package_with_the_collector_off() -> None:
    """``bin/qemu-evmcs`` (what users run) turns the collector off before the package's first import, not only
    once ``main`` runs: the import of ``cli.main`` (dataclasses, argparse, the package's core) is most of the
    objects a start-up makes. Seen from a meta-path finder that notes the collector's state at the first
    import of ``qemu_evmcs``; the script then runs as ``python SCRIPT validate`` would run it."""
    code = ("import gc, os, runpy, sys\n"
            "seen = []\n"
            "class Note:\n"
            "    @staticmethod\n"
            "    def find_spec(name, path=None, target=None):\n"
            "        if name == 'qemu_evmcs' and not seen:\n"
            "            seen.append(gc.isenabled())\n"
            "        return None\n"
            "sys.meta_path.insert(0, Note)\n"
            "import atexit\n"
            "atexit.register(lambda: os.write(2, f'at-import {seen}'.encode()))\n"
            f"sys.argv = [{str(ROOT / 'bin' / 'qemu-evmcs')!r}, 'validate']\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.endswith("at-import [False]"), proc.stderr


def test_the_command_runs_with_the_collector_on_and_the_start_up_frozen() -> None:
    """``main`` keeps the garbage collector off while the command's modules load, then freezes what the
    start-up made and turns it back on (cli/main.py ``_collect_after_start_up``): the command itself runs
    with it, as a large fleet's computation needs."""
    # The command's own function is replaced by one that reports the collector's state, then runs it.
    code = ("import gc, sys\nimport qemu_evmcs.cli.main as m\nimport qemu_evmcs.cli.commands.validate as v\n"
            "state = lambda: f'{gc.isenabled()} {gc.get_freeze_count()}'\n"
            "v.run = lambda args, real=v.run: (sys.stderr.write(state()), real(args))[1]\n"
            "print(state())\n"
            "sys.argv = ['qemu-evmcs', 'validate']\n"
            "m.main()\n")
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "True 0"     # before main: as Python starts
    enabled, frozen = proc.stderr.split()
    assert enabled == "True" and int(frozen) > 10_000, proc.stderr
