"""Replayed dataclasses (``core/classrecipe.py``) are the classes ``dataclasses`` itself makes.

The reference is ``dataclasses`` in a fresh interpreter with an empty cache (it makes every class and the
recipes are recorded); a second fresh interpreter on that cache replays them. Both describe every class
attribute by attribute (fields and all their settings, options, each method's byte code, names, defaults,
closure cells and annotations) and, for the probe classes below, what instances do (``repr``, ``==``,
``hash``, ordering, frozen assignment, ``replace``, ``asdict``, ``fields``); the descriptions must be equal
and the second run must have replayed (a counter says how many classes it did).
"""

from __future__ import annotations

import json
import marshal
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import CodeType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Describes a class and the code objects, values and functions it holds, as JSON-able data.
_DESCRIBE = r'''
import dataclasses, types
def value(v, cls):
    if v is dataclasses.MISSING: return "MISSING"
    if v is dataclasses._HAS_DEFAULT_FACTORY: return "HAS_DEFAULT_FACTORY"
    if v is cls: return "the class"
    if v is object: return "object"
    if isinstance(v, types.FunctionType): return function(v, cls)
    if isinstance(v, type): return "type " + v.__module__ + "." + v.__qualname__
    if isinstance(v, (str, int, float, bool, type(None), tuple)): return [type(v).__name__, repr(v)]
    return "instance of " + type(v).__qualname__ + " id-stable " + str(id(v) == id(v))
def code(c):
    return {"name": c.co_name, "qualname": c.co_qualname, "file": c.co_filename, "bytes": c.co_code.hex(),
            "consts": [code(k) if isinstance(k, types.CodeType) else repr(k) for k in c.co_consts],
            "names": c.co_names, "varnames": c.co_varnames, "freevars": c.co_freevars, "cellvars": c.co_cellvars,
            "argcount": [c.co_argcount, c.co_kwonlyargcount, c.co_posonlyargcount], "flags": c.co_flags}
def function(f, cls):
    return {"code": code(f.__code__), "name": f.__name__, "qualname": f.__qualname__, "module": f.__module__,
            "defaults": None if f.__defaults__ is None else [value(v, cls) for v in f.__defaults__],
            "kwdefaults": None if f.__kwdefaults__ is None else {k: value(v, cls) for k, v in f.__kwdefaults__.items()},
            "closure": [value(c.cell_contents, cls) for c in (f.__closure__ or ())],
            "annotations": {k: value(v, cls) for k, v in f.__annotations__.items()},
            "doc": f.__doc__, "dict": sorted(f.__dict__), "builtins": f.__builtins__ is __builtins__.__dict__
            if isinstance(__builtins__, types.ModuleType) else f.__builtins__ is __builtins__,
            "wrapped": function(f.__wrapped__, cls) if hasattr(f, "__wrapped__") else None}
def field(f, cls):
    return {k: value(getattr(f, k), cls) for k in ("name", "type", "default", "default_factory", "init", "repr",
                                                  "hash", "compare", "kw_only")} | {
        "metadata": dict(f.metadata), "kind": repr(f._field_type), "is body object": cls.__dict__.get(f.name) is f}
def describe(cls):
    p = cls.__dataclass_params__
    return {"params": [p.init, p.repr, p.eq, p.order, p.unsafe_hash, p.frozen],
            "keys": list(cls.__dict__),
            "fields": [field(f, cls) for f in cls.__dataclass_fields__.values()],
            "attrs": {k: value(v, cls) for k, v in cls.__dict__.items()
                      if k not in ("__dataclass_fields__", "__dataclass_params__", "__dict__", "__weakref__")},
            "abstract": sorted(getattr(cls, "__abstractmethods__", ()))}
'''

#: Imports every module of the package and describes every dataclass it defines.
_PACKAGE_PROBE = _DESCRIBE + r'''
import importlib, json, os, pkgutil, sys
import qemu_evmcs
from qemu_evmcs.core import classcache
kinds_read = set()
def noting(path, real=classcache.read_entry):
    kinds_read.add(os.path.basename(path).split("-cpython")[0])
    return real(path)
classcache.read_entry = noting
out = {}
for info in pkgutil.walk_packages(qemu_evmcs.__path__, "qemu_evmcs."):
    if info.name.endswith("__main__"):
        continue
    mod = importlib.import_module(info.name)
    for name, obj in vars(mod).items():
        if isinstance(obj, type) and obj.__module__ == info.name and hasattr(obj, "__dataclass_fields__"):
            out[info.name + "." + obj.__qualname__] = describe(obj)
print(json.dumps({"replayed": classcache.replayed, "classes": out, "entries read": sorted(kinds_read)},
                 sort_keys=True))
'''

#: Classes covering each option and field form ``dataclasses`` treats apart, defined in a module of the
#: package (only those are served from the cache), with what their instances do.
_OPTIONS_PROBE = _DESCRIBE + r'''
import dataclasses, json, sys, types
import qemu_evmcs
from qemu_evmcs.core import classcache
SOURCE = """
from __future__ import annotations
import abc
import dataclasses
from dataclasses import dataclass, field, InitVar
from typing import ClassVar

@dataclass(frozen=True)
class Frozen:
    "doc"
    a: int
    b: str = "x"
    c: tuple[int, ...] = field(default_factory=tuple)
    d: int = field(default=3, repr=False, compare=False)
    e: int = field(default=4, hash=False)
    f: dict[str, int] = field(default_factory=dict, metadata={"m": 1}, compare=False)

@dataclass(frozen=True, order=True)
class Ordered:
    "doc"
    major: int
    minor: int = 0

@dataclass(eq=False)
class Plain:
    "doc"
    items: list[int] = field(default_factory=list)
    n: int = 0

@dataclass(unsafe_hash=True)
class UnsafeHash:
    "doc"
    x: int
    y: int = field(default=0, init=False)

@dataclass(kw_only=True)
class KwOnly:
    "doc"
    p: int
    q: int = 2

@dataclass
class MixedKw:
    "doc"
    p: int
    q: int = field(default=1, kw_only=True)
    counter: ClassVar[int] = 0

@dataclass
class PostInit:
    "doc"
    base: int
    scale: InitVar[int] = 2
    total: int = field(init=False, default=0)

    def __post_init__(self, scale: int) -> None:
        self.total = self.base * scale

@dataclass(frozen=True)
class OwnMethods:
    "doc"
    v: int

    def __repr__(self) -> str:
        return "own"

    def __hash__(self) -> int:
        return 7

class HasRepr(abc.ABC):
    @abc.abstractmethod
    def __repr__(self) -> str: ...

@dataclass
class Concrete(HasRepr):
    "doc: dataclasses' __repr__ implements the abstract one (abc.update_abstractmethods)"
    v: int

@dataclass
class NoDoc:
    v: int = 1

@dataclass
class Self:
    "doc"
    self: int

@dataclass(frozen=True, slots=True)
class Slotted:
    "doc: slots=True makes a new class, which dataclasses makes every time"
    v: int
    w: str = "s"
"""
mod = types.ModuleType("qemu_evmcs._recipe_probe")
sys.modules[mod.__name__] = mod
exec(compile(SOURCE, "<probe>", "exec", dont_inherit=True), mod.__dict__)
M = mod
def attempt(f):
    try:
        return ["ok", repr(f())]
    except Exception as e:
        return ["raises", type(e).__name__, str(e)]
def behaviour():
    fr = M.Frozen(1)
    same = M.Frozen(1, d=9)
    return {
        "frozen": [repr(fr), fr == same, hash(fr) == hash(same), attempt(lambda: setattr(fr, "a", 2)),
                   repr(dataclasses.replace(fr, b="y")), dataclasses.asdict(fr),
                   [f.name for f in dataclasses.fields(fr)], M.Frozen(1).c is M.Frozen(1).c],
        "ordered": [M.Ordered(1, 2) < M.Ordered(1, 3),
                    sorted([M.Ordered(2), M.Ordered(1, 5)]) == [M.Ordered(1, 5), M.Ordered(2)],
                    attempt(lambda: M.Ordered(1) < 3), M.Ordered.__match_args__],
        "plain": [M.Plain() == M.Plain(), M.Plain.__hash__ is object.__hash__,
                  M.Plain().items is not M.Plain().items, repr(M.Plain([1]))],
        "unsafe": [hash(M.UnsafeHash(3)) == hash(M.UnsafeHash(3)), repr(M.UnsafeHash(3)),
                   attempt(lambda: M.UnsafeHash(3, 4))],
        "kwonly": [attempt(lambda: M.KwOnly(1)), repr(M.KwOnly(p=1)), M.KwOnly.__match_args__],
        "mixed": [repr(M.MixedKw(1, q=2)), attempt(lambda: M.MixedKw(1, 2)), M.MixedKw.counter,
                  [f.name for f in dataclasses.fields(M.MixedKw)]],
        "postinit": [repr(M.PostInit(3)), repr(M.PostInit(3, 5)), M.PostInit(3).total],
        "own": [repr(M.OwnMethods(1)), hash(M.OwnMethods(1)), M.OwnMethods(1) == M.OwnMethods(1)],
        "nodoc": [M.NoDoc.__doc__, repr(M.NoDoc())],
        "self": [repr(M.Self(4))],
        "slots": [repr(M.Slotted(1)), M.Slotted.__slots__, hasattr(M.Slotted(1), "__dict__"),
                  attempt(lambda: setattr(M.Slotted(1), "v", 2))],
        "abstract": attempt(lambda: M.Concrete(2)),
        "unhashable_default": attempt(lambda: exec("@dataclass\nclass Bad:\n    'doc'\n    x: list = []\n",
                                                   mod.__dict__)),
    }
names = ["Frozen", "Ordered", "Plain", "UnsafeHash", "KwOnly", "MixedKw", "PostInit", "OwnMethods", "Concrete", "NoDoc",
         "Self", "Slotted"]
print(json.dumps({"replayed": classcache.replayed, "classes": {n: describe(getattr(M, n)) for n in names},
                  "behaviour": behaviour()}, sort_keys=True, default=repr))
'''


def _run(probe: str, cache: Path) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QEMU_EVMCS_CACHE_DIR": str(cache)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, env=env,
                         check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def _first_and_replayed(probe: str, tmp_path: Path) -> tuple[dict[str, object], dict[str, object]]:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    return _run(probe, cache), _run(probe, cache)


def test_every_dataclass_of_the_package_replays_to_what_dataclasses_makes(tmp_path: Path) -> None:
    made, replayed = _first_and_replayed(_PACKAGE_PROBE, tmp_path)
    classes = made["classes"]
    assert isinstance(classes, dict) and len(classes) > 100, classes
    assert made["replayed"] == 0
    assert replayed["replayed"] == len(classes), (replayed["replayed"], len(classes))
    assert replayed["classes"] == classes
    # Every class replayed: no module's compiled method texts were even read, only recipes (core/classcache.py).
    assert replayed["entries read"] == ["dataclass-recipe"], replayed["entries read"]


def test_each_option_and_field_form_replays_to_what_dataclasses_makes(tmp_path: Path) -> None:
    made, replayed = _first_and_replayed(_OPTIONS_PROBE, tmp_path)
    assert made["replayed"] == 0
    # All but NoDoc (no docstring: dataclasses writes one with inspect), Slotted (slots=True: dataclasses makes
    # a new class) and the class whose default is a list (dataclasses refuses it, nothing is recorded, and the
    # replaying run refuses it too).
    assert replayed["replayed"] == 10
    assert replayed["classes"] == made["classes"]
    assert replayed["behaviour"] == made["behaviour"]
    behaviour = made["behaviour"]
    assert isinstance(behaviour, dict)
    # The reference itself, checked by hand against the dataclasses documentation:
    assert behaviour["unhashable_default"][0:2] == ["raises", "ValueError"]
    assert behaviour["frozen"][3][0:2] == ["raises", "FrozenInstanceError"]
    assert behaviour["frozen"][0] == "Frozen(a=1, b='x', c=(), e=4, f={})"
    assert behaviour["postinit"][2] == 6
    assert behaviour["kwonly"][0][0:2] == ["raises", "TypeError"]
    assert behaviour["abstract"] == ["ok", "Concrete(v=2)"]
    assert behaviour["slots"] == ["Slotted(v=1, w='s')", ["v", "w"], False, ["raises", "FrozenInstanceError",
                                                                               "cannot assign to field 'v'"]]


def _damage_era(cache: Path, damage: Callable[[CodeType, CodeType, tuple[CodeType, ...]], tuple[Any, ...]]) -> None:
    """Rewrite the recipe of core/kernel.py's ``Era`` in the cache as ``damage(compute, apply, codes)`` says."""
    [entry] = [p for p in cache.iterdir() if p.name.startswith("dataclass-recipe-") and
               p.name.endswith("-qemu_evmcs.core.kernel.marshal")]
    version, recipes = marshal.loads(entry.read_bytes())
    shape, recipe = recipes["Era"]
    recipes["Era"] = (shape, damage(*recipe))
    entry.write_bytes(marshal.dumps((version, recipes)))
    entry.chmod(0o600)


@pytest.mark.parametrize("damage", [
    # its method code objects are gone, which the generated compute finds out only after it has read and
    # made every field
    lambda compute, apply, codes: (compute, apply, ()) if len(codes) >= 3 else None,
    # written by another version of the generator (its file name says so): never run
    lambda compute, apply, codes: (compute.replace(co_filename="<dataclass replay 0>"),
                                   apply.replace(co_filename="<dataclass replay 0>"), codes),
    # compute and apply swapped: refused by their names and argument counts before anything runs
    lambda compute, apply, codes: (apply, compute, codes),
], ids=["codes gone", "other generator", "swapped"])
def test_a_recipe_that_does_not_fit_changes_nothing_and_is_recorded_again(
        tmp_path: Path, damage: Callable[[CodeType, CodeType, tuple[CodeType, ...]], tuple[Any, ...]]) -> None:
    """A damaged recipe must not leave a class half made: the class is made by dataclasses as if there were
    no recipe, equal to the reference, and the recipe is recorded again for the next start."""
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    made = _run(_PACKAGE_PROBE, cache)
    _damage_era(cache, damage)
    again = _run(_PACKAGE_PROBE, cache)
    classes = made["classes"]
    assert isinstance(classes, dict)
    assert again["classes"] == classes
    assert again["replayed"] == len(classes) - 1        # all but the damaged one
    assert _run(_PACKAGE_PROBE, cache)["replayed"] == len(classes)
