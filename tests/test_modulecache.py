"""The package's compiled modules served from one cache entry (``core/modulecache.py``): the same modules as
the usual import, never a stale or foreign one, and nothing served from an entry that cannot be trusted.

Every case runs the real command line in fresh interpreters on a copy of the package in a temporary
directory (so its sources can be edited), with bytecode writing on (the entry is made from the ``.pyc`` files
Python writes) and a cache directory of its own. The reference is the same command's first run, whose modules
come from the usual import.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
from pathlib import Path

from fresh_python import ROOT, fresh_python

#: Runs ``qemu-evmcs ARGV`` (stdout captured), then reports on stderr: the exit code, the output, how many
#: modules came from the entry, and for each module of the package its file, cached file, spec origin, spec
#: cached file, package, whether the entry served it, and the value of a marker the tests may add to it.
_PROBE = r'''
import sys, io, contextlib
import qemu_evmcs.cli.main as m
from qemu_evmcs.core import modulecache
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = m.run(sys.argv[1:])
mods = {name: (mod.__file__, getattr(mod, "__cached__", None), mod.__spec__.origin, mod.__spec__.cached,
               mod.__package__, mod.__spec__.loader is modulecache._Loader, getattr(mod, "EDITED", None))
        for name, mod in sorted(sys.modules.items()) if name.startswith("qemu_evmcs.")}
sys.stderr.write(repr((rc, out.getvalue(), modulecache.served, mods)))
'''

_ARGV = ("negotiate", "--model", "Skylake-Server-evmcs", "--hosts", "skylake-6.3", "skylake-5.10", "icelake-6.1")
#: A module of that command that is not a package and is imported after the module cache is installed.
_EDITED = "qemu_evmcs/core/views.py"

Report = tuple[int, str, int, dict[str, tuple[object, ...]]]


def _copy_package(where: Path) -> Path:
    """A copy of the package's sources (no compiled files) under ``where``; returns its root for ``PYTHONPATH``."""
    shutil.copytree(ROOT / "qemu_evmcs", where / "qemu_evmcs", ignore=shutil.ignore_patterns("__pycache__"))
    return where


def _run(root: Path, cache: Path | str, *, bytecode: bool = True) -> Report:
    python, env = fresh_python({"QEMU_EVMCS_CACHE_DIR": str(cache)})
    env["PYTHONPATH"] = os.pathsep.join([str(root), *env["PYTHONPATH"].split(os.pathsep)[1:]])
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if not bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    out = subprocess.run([*python, "-c", _PROBE, *_ARGV], capture_output=True, text=True, timeout=300, env=env,
                         cwd=root, check=True)
    rc, text, served, mods = ast.literal_eval(out.stderr)
    return int(rc), str(text), int(served), dict(mods)


def _entry(cache: Path) -> Path:
    [entry] = cache.glob("module-code-*.marshal")
    return entry


def _without_served(mods: dict[str, tuple[object, ...]]) -> dict[str, tuple[object, ...]]:
    return {name: (*v[:5], v[6]) for name, v in mods.items()}


def test_the_second_start_takes_the_modules_from_the_entry_and_they_are_the_same(tmp_path: Path) -> None:
    root = _copy_package(tmp_path / "a")
    cache = tmp_path / "cache"
    rc, out, served, mods = _run(root, cache)
    assert rc == 0 and served == 0 and not any(v[5] for v in mods.values())
    assert _entry(cache).stat().st_mode & 0o777 == 0o600
    again = _run(root, cache)
    assert again[:2] == (rc, out)
    assert again[2] >= 30 and again[2] == sum(1 for v in again[3].values() if v[5])
    # Every module's file, cached file, spec origin and cached file and package are the usual import's (the
    # first run imports a few more: its parse cache was cold).
    assert again[3].keys() <= mods.keys()
    assert _without_served(again[3]) == _without_served({name: mods[name] for name in again[3]})
    assert again[3]["qemu_evmcs.core.views"][0] == str(root / _EDITED)
    # Packages are never served (their __path__ and resources stay the usual import's).
    assert not again[3]["qemu_evmcs.core"][5] and not again[3]["qemu_evmcs.policy"][5]
    # runpy (python -m MODULE) asks the loader for a module's code, linecache for its source (a module
    # without dataclasses: those need their module in sys.modules under the name runpy runs them as).
    probe = ("import runpy, sys\nimport qemu_evmcs\nfrom qemu_evmcs.core import modulecache\n"
             "ns = runpy.run_module('qemu_evmcs.core.msrval', run_name='__probe__')\n"
             "print(repr(('allowed1' in ns, modulecache._Loader.get_source('qemu_evmcs.core.views'),"
             " modulecache._Loader.get_code('qemu_evmcs.core.msrval') is not None)))\n")
    python, env = fresh_python({"QEMU_EVMCS_CACHE_DIR": str(cache)})
    env["PYTHONPATH"] = os.pathsep.join([str(root), *env["PYTHONPATH"].split(os.pathsep)[1:]])
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    got = subprocess.run([*python, "-c", probe], capture_output=True, text=True, timeout=120, env=env, cwd=root,
                         check=True)
    assert ast.literal_eval(got.stdout) == (True, (root / _EDITED).read_text(), True)


def test_an_edited_module_is_imported_anew_then_served_again(tmp_path: Path) -> None:
    root = _copy_package(tmp_path / "a")
    cache = tmp_path / "cache"
    _run(root, cache)
    assert _run(root, cache)[3]["qemu_evmcs.core.views"][5]          # served
    source = root / _EDITED
    source.write_text(source.read_text() + "EDITED = 1\n")
    rc, _, _, mods = _run(root, cache)
    assert rc == 0 and mods["qemu_evmcs.core.views"][5:] == (False, 1)   # the edit, by the usual import
    assert _run(root, cache)[3]["qemu_evmcs.core.views"][5:] == (True, 1)  # recorded again, then served
    # An edit of the same size one nanosecond later: the entry does not serve it (it compares nanoseconds);
    # Python's own .pyc check compares whole seconds, so the usual import still gives the old code, as it
    # would without this package: the entry is never staler than Python's own bytecode.
    st = source.stat()
    source.write_text(source.read_text().replace("EDITED = 1", "EDITED = 2"))
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert source.stat().st_size == st.st_size
    assert _run(root, cache)[3]["qemu_evmcs.core.views"][5:] == (False, 1)
    # A second later, as any edit by hand is: the new text.
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_001))
    assert _run(root, cache)[3]["qemu_evmcs.core.views"][5:] == (False, 2)
    assert _run(root, cache)[3]["qemu_evmcs.core.views"][5:] == (True, 2)


def test_another_copy_of_the_package_gets_its_own_modules(tmp_path: Path) -> None:
    """A second copy with the same times and sizes (copied with them) and the same cache directory: its
    modules are its own (their parent directory is not the recorded one), not the first copy's code."""
    first = _copy_package(tmp_path / "a")
    cache = tmp_path / "cache"
    _run(first, cache)
    second = tmp_path / "b"
    shutil.copytree(first / "qemu_evmcs", second / "qemu_evmcs", ignore=shutil.ignore_patterns("__pycache__"))
    rc, _, served, mods = _run(second, cache)
    assert rc == 0 and served == 0
    assert mods["qemu_evmcs.core.views"][0] == str(second / _EDITED)
    # Each copy has an entry of its own: neither rewrites the other's, and each is served from its own.
    assert len(list(cache.glob("module-code-*.marshal"))) == 2
    assert _run(first, cache)[2] > 0 and _run(second, cache)[2] > 0


def test_an_entry_that_cannot_be_trusted_serves_nothing(tmp_path: Path) -> None:
    root = _copy_package(tmp_path / "a")
    cache = tmp_path / "cache"
    _run(root, cache)
    rc, out, full, _ = _run(root, cache)
    entry = _entry(cache)
    good = entry.read_bytes()
    length = int.from_bytes(good[:8], "little")
    damaged = {
        "garbage": os.urandom(4096),
        "index length past the end": (len(good) * 2).to_bytes(8, "little") + good[8:],
        "index cut short": good[:8] + good[8:8 + length // 2],
    }
    for what, data in damaged.items():
        entry.write_bytes(data)
        entry.chmod(0o600)
        got = _run(root, cache)
        assert got[:2] == (rc, out) and got[2] == 0, what
        assert _run(root, cache)[2] == full, what        # written anew at the damaged run's exit
    # Cut in the middle of the code: the modules whose code is whole are served, the others imported usually.
    entry.write_bytes(good[: 8 + length + (len(good) - 8 - length) // 2])
    entry.chmod(0o600)
    got = _run(root, cache)
    assert got[:2] == (rc, out) and 0 < got[2] < full
    entry.chmod(0o666)                                 # writable by others: never read
    assert _run(root, cache)[2] == 0
    entry.unlink()
    os.mkfifo(entry)                                   # a FIFO in its place: refused, not waited on
    got = _run(root, cache)
    assert got[:2] == (rc, out) and got[2] == 0


def test_without_bytecode_files_or_with_the_cache_off_nothing_is_kept(tmp_path: Path) -> None:
    root = _copy_package(tmp_path / "a")
    cache = tmp_path / "cache"
    for _ in range(2):                  # PYTHONDONTWRITEBYTECODE: no .pyc, so nothing to take the code from
        assert _run(root, cache, bytecode=False)[2] == 0
    assert not list(cache.glob("module-code-*"))
    for _ in range(2):
        assert _run(root, "off")[2] == 0
