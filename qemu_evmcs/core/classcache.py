"""Compiled dataclass methods kept between runs, so a command does not recompile them at every start.

Why: ``@dataclass`` writes the source of each class's ``__init__``, ``__repr__``, ``__eq__``... and compiles it
with ``exec`` when the class statement runs: about 4 million instructions per class, which no ``.pyc`` saves.
``guest-msrs`` defines 25 dataclasses (a quarter of its start-up, measured with valgrind), ``baseline --pool``
58. The generated text depends only on the class's fields and options, and compiling a text always gives
the same code object, so the code objects are kept in the per-user cache (:mod:`~qemu_evmcs.core.parsecache`'s
directory and safety rules: a regular file owned by this user, writable by no one else, written atomically),
one entry per module that defines dataclasses (a command reads only its own modules'), keyed by the source
text and tagged with the exact interpreter build (``sys.version``, stored in the entry and compared: byte
code is version-specific). The classes are the ones ``dataclasses`` makes: only ``compile`` is skipped on a hit.

How: :func:`install` (called by the package's ``__init__``, before any module defining a dataclass is
imported, so for every entry point) replaces the name
``exec`` in the ``dataclasses`` module's namespace, which its ``_create_fn`` calls with the generated text,
by :func:`_cached_exec`: a cached code object for a known text, else ``compile`` exactly as ``exec`` would
(no inherited ``__future__`` flags: ``dataclasses`` has none). Anything else passed to it is the real
``exec``, and so are the generated texts of every module outside this package: a program that imports
qemu-evmcs as a library keeps its own dataclasses compiled as Python compiles them. New code objects are
written once, at exit. ``QEMU_EVMCS_CACHE_DIR=off`` turns it off with the
parse cache. If a Python version stops compiling dataclass methods through ``exec``, nothing changes except
the saving.

Since the methods alone left ``@dataclass`` at 0.8 million instructions per class, a second entry per
module keeps, per class, the recipe of what the decorator did (:mod:`~qemu_evmcs.core.classrecipe`):
``dataclasses._process_class`` is replaced by :func:`_cached_process_class`, which replays a recipe whose
class shape matches and otherwise calls the real one and records it. Both entries are ``(sys.version,
dict)``: ``dataclass-recipe`` (class qualname -> (shape, recipe)) is read at every start, ``dataclass-code``
(text -> code object) only when a class misses its recipe. guest-msrs: 156 -> 150 M instructions, validate
226 -> 209 M.

Unlike parse-cache entries (plain data), these entries are code; they are as trusted as the ``__pycache__``
files Python itself writes next to a user's modules, under the same ownership checks.
"""

from __future__ import annotations

import atexit
import builtins
import os
import sys
from types import CodeType
from qemu_evmcs.core.typecheck import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

from qemu_evmcs.core import classrecipe, lazy
from qemu_evmcs.core.parsecache import cache_dir, interpreter_entry_path, read_entry, write_entry
from qemu_evmcs.core.regexcache import re_stand_ins

dataclasses = lazy.module_deferring("dataclasses", "inspect", "copy", *re_stand_ins())
_real_exec = builtins.exec
#: Only this package's dataclasses are served from the cache. The hook is process-wide (``dataclasses.exec``),
#: but a program that imports qemu-evmcs as a library gets its own dataclasses compiled exactly as before.
_PACKAGE = __name__.partition(".")[0]
#: module name -> source text -> code object (read from that module's entry, plus what this process compiled).
_codes: dict[str, dict[str, CodeType]] = {}
#: module name -> how many of its code objects came from its entry (more at exit: write the entry again).
_loaded: dict[str, int] = {}
#: module name -> class qualname -> (shape, recipe) of :mod:`~qemu_evmcs.core.classrecipe`.
_recipes: dict[str, dict[str, tuple[Any, ...]]] = {}
#: Modules with a recipe recorded by this process (their entry is written at exit).
_recorded: set[str] = set()
#: How many classes this process made by replaying a recipe (the tests read it).
replayed = 0
_dir: str | None = None
_real_process_class: Any = None


def _entry_path(where: str, kind: str, module: str) -> str:
    """Two entries per module that defines dataclasses, so a command reads only its own modules': its classes'
    recipes (``dataclass-recipe``, read at every start) and its compiled method texts (``dataclass-code``,
    read only when a class misses its recipe: a start that replays every class never needs them, and they
    are most of the bytes, about 320 KB for ``negotiate``'s modules)."""
    return interpreter_entry_path(where, kind, module)


def _read(where: str, kind: str, module: str) -> dict[Any, Any]:
    """The dict of an entry (``{}`` if missing, damaged or of another interpreter build: the file name is only
    an address; the build stored in it is compared whole)."""
    hit, entry = read_entry(_entry_path(where, kind, module))
    if hit and type(entry) is tuple and len(entry) == 2 and entry[0] == sys.version and type(entry[1]) is dict:
        return entry[1]
    return {}


def _load(where: str, module: str) -> None:
    """Read ``module``'s recipes once."""
    if module not in _recipes:
        _recipes[module] = {k: v for k, v in _read(where, "dataclass-recipe", module).items()
                            if type(k) is str and classrecipe.is_recipe(v)}


def _module_codes(where: str, module: str) -> dict[str, CodeType]:
    """``module``'s compiled method texts, read at the first miss."""
    codes = _codes.get(module)
    if codes is None:
        codes = _codes[module] = {k: v for k, v in _read(where, "dataclass-code", module).items()
                                  if type(k) is str and type(v) is CodeType}
        _loaded[module] = len(codes)
    return codes


def _ours(module: object) -> bool:
    return (type(module) is str and _dir is not None and os.sep not in module
            and (module == _PACKAGE or module.startswith(_PACKAGE + ".")))


def _cached_process_class(cls: type, *params: Any) -> type:
    """``dataclasses._process_class``, replayed from this class's recipe when its shape is the recorded one;
    else the real one, whose effects are then recorded (:mod:`~qemu_evmcs.core.classrecipe`)."""
    global replayed
    module = cls.__module__
    namespace = sys.modules.get(module)
    if _dir is None or not _ours(module) or namespace is None:
        return _real_process_class(cls, *params)  # type: ignore[no-any-return]
    try:
        shape = classrecipe.shape(cls, params)
    except classrecipe.Uncacheable:
        return _real_process_class(cls, *params)  # type: ignore[no-any-return]
    _load(_dir, module)
    recipes = _recipes[module]
    found = recipes.get(cls.__qualname__)
    if found is not None and found[0] == shape:
        try:
            made_again = classrecipe.replay(cls, params, found[1], namespace.__dict__)
        except classrecipe.Uncacheable:
            pass        # a recipe that does not fit (damaged): made and recorded again below
        else:
            replayed += 1
            return made_again
    before = dict(cls.__dict__)
    made: type = _real_process_class(cls, *params)
    try:
        recipes[cls.__qualname__] = (shape, classrecipe.record(made, before))
        _recorded.add(module)
    except classrecipe.Uncacheable:
        pass
    return made


def _cached_exec(source: Any, globs: Any = None, locs: Any = None) -> None:
    """``exec(source, globs, locs)``, compiling a source text at most once per cache lifetime (per module:
    ``globs`` is the namespace of the module whose class is being made)."""
    module = globs.get("__name__") if type(globs) is dict else None
    if type(source) is str and type(module) is str and _dir is not None and _ours(module):
        codes = _module_codes(_dir, module)
        code = codes.get(source)
        if code is None:
            code = codes[source] = compile(source, "<string>", "exec", dont_inherit=True)
        source = code
    elif type(source) is str:
        # Compiled here rather than by exec: exec of a text inherits the __future__ flags of its caller, and
        # this module's "annotations" would turn the generated __init__'s annotations of every other
        # program's dataclasses into strings (inspect.signature would show "_type_x" for "int").
        source = compile(source, "<string>", "exec", dont_inherit=True)
    _real_exec(source, globs, locs)


def _save() -> None:
    if _dir is None:
        return
    for module in sorted(_recorded):
        write_entry(_dir, _entry_path(_dir, "dataclass-recipe", module), (sys.version, _recipes[module]))
    for module, codes in sorted(_codes.items()):
        if len(codes) > _loaded.get(module, 0):
            write_entry(_dir, _entry_path(_dir, "dataclass-code", module), (sys.version, codes))


def install() -> None:
    """Serve ``dataclasses``' generated methods from the cache (once per process; no-op when the cache is off)."""
    global _dir
    where = cache_dir()
    if where is None or _dir is not None:
        return
    _dir = where
    dataclasses.exec = _cached_exec  # type: ignore[attr-defined]
    if classrecipe.SUPPORTED:
        global _real_process_class
        _real_process_class = dataclasses._process_class
        dataclasses._process_class = _cached_process_class  # type: ignore[attr-defined]
    atexit.register(_save)


__all__ = ["install"]
