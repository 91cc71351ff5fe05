"""The package's regular expressions, compiled once per cache lifetime instead of at every start.

Why: ``re.compile`` parses and compiles a pattern in pure Python, about 0.8 million instructions for the
release and CPUID patterns here; ``validate`` compiles eleven of them at each start (8.6 M instructions,
a fifth of a bare interpreter), ``guest-msrs`` six. What it produces is a pure function of the pattern and
its flags: the flags, the program (a list of integers) and the group tables that ``_sre.compile`` turns
into a pattern object. Those are kept in the per-user cache (:mod:`~qemu_evmcs.core.parsecache`'s
directory and rules: one entry, written atomically, tagged with the exact interpreter build, since the
program format is the ``re`` engine's own), and a later start hands them straight to ``_sre.compile``.

Checked, not assumed: a pattern is stored only after the object built from its stored parts compared
equal to ``re.compile``'s (pattern objects compare their pattern, flags and program), and
``tests/test_regexcache.py`` compares every pattern of the package built both ways. When ``re``'s
internals this relies on (``re._parser.parse``, ``re._compiler._code``) are missing, or the cache is off
(``QEMU_EVMCS_CACHE_DIR=off``), :func:`regex` is ``re.compile``.

Only patterns written in the code go through here (module constants), never text from input: the cache
holds one entry per pattern, so its size is bounded by the source.
"""

from __future__ import annotations

import atexit
import re
import sys

from qemu_evmcs.core.parsecache import cache_dir, interpreter_entry_path, read_entry, write_entry
from qemu_evmcs.core.typecheck import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

_parse = getattr(getattr(re, "_parser", None), "parse", None)
_code = getattr(getattr(re, "_compiler", None), "_code", None)
_sre_compile = getattr(getattr(re, "_compiler", None), "_sre", None)

#: (pattern, flags) -> (flags, program, groups, groupindex, indexgroup), read from the entry at first use.
_known: dict[tuple[str, int], tuple[Any, ...]] | None = None
#: Whether this process stored a pattern (the entry is written at exit).
_changed = False
_dir: str | None = None
#: How many patterns this process built from the cache (the tests read it).
served = 0


def _load() -> dict[tuple[str, int], tuple[Any, ...]]:
    global _known, _dir
    if _known is None:
        _known = {}
        _dir = cache_dir()
        if _dir is not None:
            hit, entry = read_entry(interpreter_entry_path(_dir, "regex"))
            if (hit and type(entry) is tuple and len(entry) == 2 and entry[0] == sys.version
                    and type(entry[1]) is dict):
                _known.update((k, v) for k, v in entry[1].items() if _plausible(k, v))
            atexit.register(_save)
    return _known


def _plausible(key: object, value: object) -> bool:
    return (type(key) is tuple and len(key) == 2 and type(key[0]) is str and type(key[1]) is int
            and type(value) is tuple and len(value) == 5 and type(value[0]) is int and type(value[1]) is list
            and type(value[2]) is int and type(value[3]) is dict and type(value[4]) is tuple)


def _parts(pattern: str, flags: int) -> tuple[Any, ...]:
    """What ``re._compiler.compile`` hands to ``_sre.compile`` for ``pattern``, as plain data."""
    assert _parse is not None and _code is not None
    parsed = _parse(pattern, flags)
    program = _code(parsed, flags)
    groupindex = dict(parsed.state.groupdict)
    indexgroup = [None] * parsed.state.groups
    for name, i in groupindex.items():
        indexgroup[i] = name
    # The opcodes are int subclasses (re._constants), which marshal refuses: stored as the ints they are.
    return (int(flags | parsed.state.flags), [int(op) for op in program], int(parsed.state.groups - 1), groupindex,
            tuple(indexgroup))


def _build(pattern: str, parts: tuple[Any, ...]) -> re.Pattern[str]:
    assert _sre_compile is not None
    built: re.Pattern[str] = _sre_compile.compile(pattern, parts[0], parts[1], parts[2], parts[3], parts[4])
    return built


def regex(pattern: str, flags: int = 0) -> re.Pattern[str]:
    """``re.compile(pattern, flags)``, from the cache when this build compiled the pattern before."""
    global served, _changed
    flags = int(flags)
    if _parse is None or _code is None or _sre_compile is None:
        return re.compile(pattern, flags)
    known = _load()
    if _dir is None:
        return re.compile(pattern, flags)
    parts = known.get((pattern, flags))
    if parts is not None:
        try:
            built = _build(pattern, parts)
        except Exception:   # noqa: BLE001 -- a damaged entry (_sre checks the program): compiled anew below
            del known[(pattern, flags)]
        else:
            served += 1
            return built
    compiled = re.compile(pattern, flags)
    try:
        parts = _parts(pattern, flags)
        if _build(pattern, parts) == compiled:      # same pattern, flags and program: safe to keep
            known[(pattern, flags)] = parts
            _changed = True
    except Exception:   # noqa: BLE001 -- an internal of re changed: this pattern is simply not cached
        pass
    return compiled


def _save() -> None:
    if _dir is not None and _known is not None and _changed:
        write_entry(_dir, interpreter_entry_path(_dir, "regex"), (sys.version, _known))


__all__ = ["regex"]
