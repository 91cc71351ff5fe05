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

Only patterns written in code go through here, never text from input, so the entry's size is bounded by the
source: the package's module constants, and those the standard library modules of every start compile
(:func:`re_stand_ins`).

``re`` itself is not imported for a pattern the entry holds: importing it imports ``enum``, and the two cost
23 million instructions, 0.6x a bare ``python -c pass``, at every start, for patterns that are all in the
entry. :func:`re_stand_ins` gives the start-up a stand-in for ``re`` that serves ``compile``, ``match``,
``fullmatch`` and ``search`` of such patterns and the flag constants (ints, as ``re`` recorded them in the
entry), and imports the real ``re`` for anything else.
"""

from __future__ import annotations

import atexit
import sys

from qemu_evmcs.core import lazy
from qemu_evmcs.core.parsecache import cache_dir, interpreter_entry_path, read_entry, write_entry
from qemu_evmcs.core.typecheck import TYPE_CHECKING

if TYPE_CHECKING:
    import re
    from collections.abc import Callable
    from typing import Any

#: The regular-expression engine (C), which builds a pattern object from a program; it has no type stubs.
_sre: Any = lazy.module("_sre")
#: (pattern, flags) -> (flags, program, groups, groupindex, indexgroup), read from the entry at first use.
_known: dict[tuple[str, int], tuple[Any, ...]] | None = None
#: ``re``'s flag constants (name -> int) as the entry recorded them; empty until read or recorded.
_flags: dict[str, int] = {}
#: ``re.escape``'s table for text (``re._special_chars_map``: code point -> escaped text), likewise.
_escapes: dict[int, str] = {}
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
            if (hit and type(entry) is tuple and len(entry) == 4 and entry[0] == sys.version
                    and type(entry[1]) is dict and _typed(entry[2], str, int) and _typed(entry[3], int, str)):
                _known.update((k, v) for k, v in entry[1].items() if _plausible(k, v))
                _flags.update(entry[2])
                _escapes.update(entry[3])
                for name, value in _flags.items():      # what the stand-in answers for re.VERBOSE and the like
                    setattr(_STAND_IN, name, value)
            atexit.register(_save)
    return _known


def _typed(table: object, key: type, value: type) -> bool:
    return type(table) is dict and all(type(k) is key and type(v) is value for k, v in table.items())


def _plausible(key: object, value: object) -> bool:
    return (type(key) is tuple and len(key) == 2 and type(key[0]) is str and type(key[1]) is int
            and type(value) is tuple and len(value) == 5 and type(value[0]) is int and type(value[1]) is list
            and type(value[2]) is int and type(value[3]) is dict and type(value[4]) is tuple)


def _re() -> Any:
    """The real ``re``, imported now if only the stand-in was (then it leaves ``sys.modules``)."""
    return _STAND_IN.real_module()


def _internals() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """``re._parser.parse`` and ``re._compiler._code``, or ``None`` when this ``re`` lacks them."""
    real = _re()
    parse = getattr(getattr(real, "_parser", None), "parse", None)
    code = getattr(getattr(real, "_compiler", None), "_code", None)
    return None if parse is None or code is None else (parse, code)


def _parts(pattern: str, flags: int, parse: Callable[..., Any], code: Callable[..., Any]) -> tuple[Any, ...]:
    """What ``re._compiler.compile`` hands to ``_sre.compile`` for ``pattern``, as plain data."""
    parsed = parse(pattern, flags)
    program = code(parsed, flags)
    groupindex = dict(parsed.state.groupdict)
    indexgroup = [None] * parsed.state.groups
    for name, i in groupindex.items():
        indexgroup[i] = name
    # The opcodes are int subclasses (re._constants), which marshal refuses: stored as the ints they are.
    return (int(flags | parsed.state.flags), [int(op) for op in program], int(parsed.state.groups - 1), groupindex,
            tuple(indexgroup))


def _build(pattern: str, parts: tuple[Any, ...]) -> re.Pattern[str]:
    built: re.Pattern[str] = _sre.compile(pattern, parts[0], parts[1], parts[2], parts[3], parts[4])
    return built


def regex(pattern: str, flags: int = 0) -> re.Pattern[str]:
    """``re.compile(pattern, flags)``, from the cache when this build compiled the pattern before."""
    global served, _changed
    flags = int(flags)
    known = _load()
    if _dir is None:
        return _re().compile(pattern, flags)  # type: ignore[no-any-return]
    parts = known.get((pattern, flags))
    if parts is not None:
        try:
            built = _build(pattern, parts)
        except Exception:   # noqa: BLE001 -- a damaged entry (_sre checks the program): compiled anew below
            del known[(pattern, flags)]
        else:
            served += 1
            return built
    real = _re()
    compiled: re.Pattern[str] = real.compile(pattern, flags)
    internals = _internals()
    if internals is None:
        return compiled
    try:
        parts = _parts(pattern, flags, *internals)
        if _build(pattern, parts) == compiled:      # same pattern, flags and program: safe to keep
            known[(pattern, flags)] = parts
            _changed = True
            _record_constants(real)
    except Exception:   # noqa: BLE001 -- an internal of re changed: this pattern is simply not cached
        pass
    return compiled


def _record_constants(real: Any) -> None:
    """What the stand-in answers besides patterns, as this interpreter's ``re`` has it (stored in the entry);
    once per process."""
    if _flags:
        return
    _flags.update((name, int(value)) for name, value in vars(real).items() if isinstance(value, real.RegexFlag))
    table = getattr(real, "_special_chars_map", None)
    probe = "a.b*c d\t[-]\u00e9"
    if _typed(table, int, str) and real.escape(probe) == probe.translate(table):   # type: ignore[arg-type]
        _escapes.update(table)   # type: ignore[arg-type]


class _ReStandIn(lazy.StandIn):
    """``re`` while the standard library modules every start imports are imported (:func:`re_stand_ins`).

    ``compile`` and the one-shot ``match``/``fullmatch``/``search`` of a text pattern go through
    :func:`regex` (argparse calls ``re.match`` with its own argument patterns while it parses), ``escape``
    of a text uses ``re``'s table as the entry recorded it; any other name, or a bytes or precompiled
    pattern, is the real ``re``'s. The flag constants are set from the entry, as ints: what
    ``re.compile`` makes of an int is what it makes of the flag.
    """

    def compile(self, pattern: Any, flags: int = 0) -> Any:
        if type(pattern) is str and isinstance(flags, int):
            return regex(pattern, int(flags))
        return self.real_module().compile(pattern, flags)

    def match(self, pattern: Any, string: Any, flags: int = 0) -> Any:
        return self.compile(pattern, flags).match(string)

    def fullmatch(self, pattern: Any, string: Any, flags: int = 0) -> Any:
        return self.compile(pattern, flags).fullmatch(string)

    def search(self, pattern: Any, string: Any, flags: int = 0) -> Any:
        return self.compile(pattern, flags).search(string)

    def escape(self, pattern: Any) -> Any:
        # textwrap escapes its whitespace characters for a pattern at import; re.escape of a text is this
        # translation with re's own table.
        if type(pattern) is str and _escapes:
            return pattern.translate(_escapes)
        return self.real_module().escape(pattern)


_STAND_IN = _ReStandIn("re")


def re_stand_ins() -> tuple[lazy.StandIn, ...]:
    """For :func:`~qemu_evmcs.core.lazy.module_deferring`: the stand-in for ``re``, or nothing when the cache
    is off or ``re`` is imported already (then it is simply ``re``).

    Why: ``dataclasses``, ``argparse``, ``gettext``, ``locale`` and ``textwrap`` import ``re`` (and with it
    ``enum``) for patterns they compile at import or while a parser is built, all of which the entry holds
    after the first start. On a cold cache the stand-in imports the real ``re`` at its first miss and
    records every pattern that goes through it (and ``re``'s flags) for the next start."""
    _load()
    return () if _dir is None or not _STAND_IN.placeable() else (_STAND_IN,)


def _save() -> None:
    if _dir is not None and _known is not None and _changed:    # a stored pattern recorded the flags too
        write_entry(_dir, interpreter_entry_path(_dir, "regex"), (sys.version, _known, _flags, _escapes))


__all__ = ["re_stand_ins", "regex"]
