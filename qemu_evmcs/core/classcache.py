"""Compiled dataclass methods kept between runs, so a command does not recompile them at every start.

Why: ``@dataclass`` writes the source of each class's ``__init__``, ``__repr__``, ``__eq__``... and compiles it
with ``exec`` when the class statement runs: about 4 million instructions per class, which no ``.pyc`` saves.
``guest-msrs`` defines 25 dataclasses (a quarter of its start-up, measured with valgrind), ``baseline --pool``
58. The generated text depends only on the class's fields and options, and compiling a text always gives
the same code object, so the code objects are kept in the per-user cache (:mod:`~qemu_evmcs.core.parsecache`'s
directory and safety rules: a regular file owned by this user, writable by no one else, written atomically),
keyed by the source text and tagged with the exact interpreter build (``sys.version``: byte code is
version-specific). The classes are the ones ``dataclasses`` makes: only ``compile`` is skipped on a hit.

How: :func:`install` (called by the CLI package before any command module is imported) replaces the name
``exec`` in the ``dataclasses`` module's namespace, which its ``_create_fn`` calls with the generated text,
by :func:`_cached_exec`: a cached code object for a known text, else ``compile`` exactly as ``exec`` would
(no inherited ``__future__`` flags: ``dataclasses`` has none). Anything else passed to it is the real
``exec``. New code objects are written once, at exit. ``QEMU_EVMCS_CACHE_DIR=off`` turns it off with the
parse cache. If a Python version stops compiling dataclass methods through ``exec``, nothing changes except
the saving.

Unlike parse-cache entries (plain data), these entries are code; they are as trusted as the ``__pycache__``
files Python itself writes next to a user's modules, under the same ownership checks.
"""

from __future__ import annotations

import atexit
import builtins
import dataclasses
import hashlib
import os
import sys
from types import CodeType
from typing import Any

from qemu_evmcs.core.parsecache import cache_dir, read_entry, write_entry

_real_exec = builtins.exec
#: source text -> code object (loaded from the cache, plus what this process compiled).
_codes: dict[str, CodeType] = {}
#: How many of :data:`_codes` came from the cache file (more at exit: write it again).
_loaded = 0
_path: str | None = None


def _entry_path(where: str) -> str:
    tag = hashlib.sha256(sys.version.encode()).hexdigest()[:16]
    return os.path.join(where, f"dataclass-code-{sys.implementation.cache_tag}-{tag}.marshal")


def _cached_exec(source: Any, globs: Any = None, locs: Any = None) -> None:
    """``exec(source, globs, locs)``, compiling a source text at most once per cache lifetime."""
    if type(source) is str:
        code = _codes.get(source)
        if code is None:
            code = _codes[source] = compile(source, "<string>", "exec", dont_inherit=True)
        source = code
    _real_exec(source, globs, locs)


def _save() -> None:
    if _path is not None and len(_codes) > _loaded:
        write_entry(os.path.dirname(_path), _path, dict(_codes))


def install() -> None:
    """Serve ``dataclasses``' generated methods from the cache (once per process; no-op when the cache is off)."""
    global _loaded, _path
    where = cache_dir()
    if where is None or _path is not None:
        return
    _path = _entry_path(where)
    hit, value = read_entry(_path)
    if hit and type(value) is dict:
        _codes.update((k, v) for k, v in value.items() if type(k) is str and type(v) is CodeType)
    _loaded = len(_codes)
    dataclasses.exec = _cached_exec  # type: ignore[attr-defined]
    atexit.register(_save)


__all__ = ["install"]
