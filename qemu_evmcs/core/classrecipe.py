"""What ``@dataclass`` did to a class, recorded once and replayed at later starts.

Why: with its generated methods already compiled (:mod:`~qemu_evmcs.core.classcache`), ``@dataclass`` still
costs about 0.8 million instructions per class at every start: it re-derives each field from the string
annotations (three regular-expression checks per field), writes the text of every method and builds each
function. ``guest-msrs`` defines 25 dataclasses (19 M instructions, an eighth of its start), ``validate``
58. What the decorator does is a pure function of the class statement (its options, annotations, the
values in its body, which methods it defines itself), so it is done by ``dataclasses`` itself the first
time and its effects are recorded: which attributes it set, deleted or replaced, and for each generated
function its code object, defaults, closure and annotations, each value named by where it came from (a
field's default, default factory or type; the class; ``MISSING``...). From those, two functions are written
and compiled once (:func:`_replay_source`): one works out every value, the other sets them, as straight-line
code. A later start whose class statement has the same *shape* (:func:`shape`) runs them, which makes the
same class (about 124 thousand instructions per class; interpreting the recorded effects took 188 thousand).

It is checked, not assumed: ``tests/test_classrecipe.py`` builds every dataclass of the package both ways
in two fresh interpreters and compares them attribute by attribute (fields, options, each method's code,
defaults, closure and annotations), and covers every option combination ``dataclasses`` treats apart.

Anything this module does not recognise is not recorded, and that class always goes through
``dataclasses``: inherited dataclass fields, ``slots=True``, a class without a docstring (``dataclasses``
writes one with ``inspect``), a value in a generated function that is not one of the named sources, an
annotation that is not a string. The recipes are tagged with the exact interpreter build by the cache
(``classcache``): they use private names of this ``dataclasses`` version (``_FIELD``, ``_recursive_repr``,
``_HAS_DEFAULT_FACTORY``), so a different Python never replays them; if one of those names is missing,
nothing is recorded or replayed.
"""

from __future__ import annotations

import abc
import builtins
import keyword
from collections.abc import Iterable
from types import CellType, CodeType, FunctionType

from qemu_evmcs.core import lazy
from qemu_evmcs.core.regexcache import re_stand_ins
from qemu_evmcs.core.typecheck import TYPE_CHECKING

if TYPE_CHECKING:
    import dataclasses
    from typing import Any
else:   # without inspect (used only for a class without a docstring: core/lazy.py) and copy (asdict and astuple
        # only), and on a warm cache without re (core/regexcache.py)
    dataclasses = lazy.module_deferring("dataclasses", "inspect", "copy", *re_stand_ins())

#: The attributes ``_process_class`` may add; a class that defines one itself keeps it (part of the shape).
_METHODS = frozenset({"__init__", "__repr__", "__eq__", "__lt__", "__le__", "__gt__", "__ge__", "__hash__",
                      "__setattr__", "__delattr__", "__match_args__", "__post_init__"})
_ABSENT = "<absent>"
_MISSING_TEXT = "<MISSING>"
#: A field's kind as a recipe writes it: letter -> the name of the ``dataclasses`` marker.
_KINDS = {"F": "_FIELD", "C": "_FIELD_CLASSVAR", "I": "_FIELD_INITVAR"}
#: The values a recipe may name besides a field's type, default and factory: name -> the expression that gives
#: it in the generated code (:func:`_replay_source`: ``D`` is ``dataclasses``; ``MISSING`` and ``cls`` are its
#: locals). Recording evaluates the same expressions (:func:`_environment`), so both read this one table.
_FIXED = {"MISSING": "MISSING", "HDF": "D._HAS_DEFAULT_FACTORY", "object": "object", "cls": "cls",
          "FIE": "D.FrozenInstanceError", "None": "None"}

#: The private names of ``dataclasses`` this module relies on; without one of them it stays out of the way.
_PRIVATE = ("_FIELD", "_FIELD_CLASSVAR", "_FIELD_INITVAR", "_HAS_DEFAULT_FACTORY", "_recursive_repr",
            "_DataclassParams", "FrozenInstanceError")
#: The parameters of ``_process_class`` the shape reads by position (``slots`` is the 9th).
_PARAMETERS = ("cls", "init", "repr", "eq", "order", "unsafe_hash", "frozen", "match_args", "kw_only", "slots",
               "weakref_slot")


def _supported() -> bool:
    """This ``dataclasses`` has every private name used here and ``_process_class`` takes the parameters in
    the order this module reads them (another Python may change either: then nothing is replayed)."""
    code = getattr(getattr(dataclasses, "_process_class", None), "__code__", None)
    return (all(hasattr(dataclasses, n) for n in _PRIVATE) and code is not None
            and code.co_varnames[:code.co_argcount] == _PARAMETERS)


SUPPORTED = _supported()


class Uncacheable(Exception):
    """Something about this class is outside what a recipe can replay: ``dataclasses`` makes it."""


def _kind_text(value: object) -> str:
    for letter, marker in _KINDS.items():
        if value is getattr(dataclasses, marker):
            return letter
    raise Uncacheable("field kind")


def _describe(cls: type, name: str) -> tuple[Any, ...]:
    """What the class body gives field ``name``: nothing, a ``field(...)``, or a plain default value."""
    if name not in cls.__dict__:
        if hasattr(cls, name):        # a default inherited from a base class: not replayed
            raise Uncacheable(name)
        return (_ABSENT,)
    value = cls.__dict__[name]
    if isinstance(value, dataclasses.Field):
        kw_only = value.kw_only
        return ("field", value.default is dataclasses.MISSING, type(value.default).__qualname__,
                value.default_factory is dataclasses.MISSING, value.init, value.repr, value.hash, value.compare,
                _MISSING_TEXT if kw_only is dataclasses.MISSING else bool(kw_only), bool(value.metadata))
    return ("value", type(value).__module__, type(value).__qualname__)


def shape(cls: type, params: tuple[Any, ...]) -> tuple[Any, ...]:
    """Everything of a class statement that ``_process_class``'s result depends on.

    :raise Uncacheable: for a class this module does not replay.
    """
    if not SUPPORTED or params[8] or params[9]:      # slots, weakref_slot: dataclasses makes a new class
        raise Uncacheable("slots")
    if not cls.__doc__:
        raise Uncacheable("no docstring")
    if any(hasattr(b, "__dataclass_fields__") for b in cls.__mro__[1:]):
        raise Uncacheable("dataclass base")
    annotations = cls.__dict__.get("__annotations__", {})
    fields = []
    for name, annotation in annotations.items():
        if type(name) is not str or type(annotation) is not str:
            raise Uncacheable(name)
        fields.append((name, annotation, _describe(cls, name)))
    own = tuple(sorted(k for k in cls.__dict__ if k in _METHODS))
    return (cls.__qualname__, tuple(params), tuple(fields), own, hasattr(cls, "__post_init__"))


def _environment(cls: type, fields: Iterable[tuple[str, object, object, object]]) -> dict[str, object]:
    """Every value a generated function or attribute may hold, by the name a recipe uses for it.

    :param fields: ``(name, type, default, default_factory)`` of each field (``MISSING`` where there is none).
    """
    names = {"D": dataclasses, "MISSING": dataclasses.MISSING, "cls": cls, "__builtins__": {"object": object}}
    env: dict[str, object] = {name: eval(expr, names) for name, expr in _FIXED.items()}  # noqa: S307 -- _FIXED's own
    for name, type_, default, factory in fields:
        env["t:" + name] = type_
        if default is not dataclasses.MISSING:
            env["d:" + name] = default
        if factory is not dataclasses.MISSING:
            env["f:" + name] = factory
    return env


def _name_of(value: object, env: dict[str, object], hint: str | None = None) -> str:
    """The environment name of ``value`` (the hint first: a freevar ``_dflt_x`` is field x's default)."""
    if hint is not None:
        if hint.startswith("_type_"):
            candidates = ["t:" + hint[6:]]
        elif hint.startswith("_dflt_"):
            candidates = ["d:" + hint[6:], "f:" + hint[6:]]
        elif hint == "_return_type":
            candidates = ["None"]
        else:
            candidates = []
        for key in candidates:
            if key in env and env[key] is value:
                return key
    for key, known in env.items():
        if known is value:
            return key
    raise Uncacheable(f"value {type(value).__name__}")


def _function_recipe(fn: Any, env: dict[str, object]) -> tuple[Any, ...]:
    if type(fn) is not FunctionType or fn.__code__.co_filename != "<string>":
        raise Uncacheable("function")
    code = fn.__code__
    closure = tuple(_name_of(cell.cell_contents, env, var)
                    for var, cell in zip(code.co_freevars, fn.__closure__ or (), strict=True))
    defaults = None if fn.__defaults__ is None else tuple(_name_of(v, env) for v in fn.__defaults__)
    kwdefaults = None if fn.__kwdefaults__ is None else tuple(
        (k, _name_of(v, env, "_dflt_" + k)) for k, v in fn.__kwdefaults__.items())
    annotations = tuple((k, _name_of(v, env, "_return_type" if k == "return" else "_type_" + k))
                        for k, v in fn.__annotations__.items())
    if fn.__dict__ or fn.__doc__ is not None:
        raise Uncacheable("function attributes")
    return (code, fn.__name__, fn.__qualname__, defaults, kwdefaults, closure, annotations)


def record(cls: type, before: dict[str, Any]) -> tuple[Any, ...]:
    """The recipe of what ``_process_class`` did to ``cls`` (``before``: a copy of its ``__dict__`` then): the
    two generated functions of :func:`_replay_source`, compiled, and the code objects of the class's generated
    methods they build functions from.

    :raise Uncacheable: when some effect is not one a recipe can name.
    """
    fields: dict[str, Any] = cls.__dict__["__dataclass_fields__"]
    env = _environment(cls, ((n, f.type, f.default, f.default_factory) for n, f in fields.items()))
    field_recipes = []
    for name, f in fields.items():
        kw_only = _MISSING_TEXT if f.kw_only is dataclasses.MISSING else bool(f.kw_only)
        from_body = before.get(name) is f
        if not from_body and (f.default_factory is not dataclasses.MISSING or not f.init or not f.repr
                              or f.hash is not None or not f.compare or f.metadata):
            raise Uncacheable(name)
        field_recipes.append((name, _kind_text(f._field_type), from_body, kw_only))
    effects: list[tuple[Any, ...]] = []
    for key, value in cls.__dict__.items():
        if (key in before and before[key] is value) or key == "__abstractmethods__":
            continue    # (abc.update_abstractmethods, which replay calls too, sets that one)
        if key == "__dataclass_fields__":
            effects.append(("set", key, ("fields",)))
        elif key == "__dataclass_params__":
            effects.append(("set", key, ("params",)))
        elif key == "__match_args__" and type(value) is tuple and all(type(v) is str for v in value):
            effects.append(("set", key, ("const", value)))
        elif (type(value) is FunctionType and value.__code__.co_filename != "<string>"
              and type(getattr(value, "__wrapped__", None)) is FunctionType):
            # __repr__: dataclasses._recursive_repr's wrapper around the generated function
            wrapped = value.__wrapped__  # type: ignore[attr-defined]
            effects.append(("set", key, ("rrepr", _function_recipe(wrapped, env), value.__qualname__)))
        elif type(value) is FunctionType:
            effects.append(("set", key, ("fn", _function_recipe(value, env))))
        else:
            effects.append(("set", key, ("env", _name_of(value, env, "_dflt_" + key))))
    effects += [("del", key) for key in before if key not in cls.__dict__]
    source, codes = _replay_source(field_recipes, effects)
    module = compile(source, _REPLAY_FILE, "exec", dont_inherit=True)
    compute, apply = (c for c in module.co_consts if type(c) is CodeType)
    return (compute, apply, codes)


#: The file name of the generated replay functions: it names them in a traceback, and :func:`is_recipe` takes
#: only functions of this name (the number is bumped whenever :func:`_replay_source` writes them differently, so
#: a cache written by another version of this module is recorded again, never run).
_REPLAY_FILE = "<dataclass replay 1>"


def _replay_source(field_recipes: list[tuple[Any, ...]], effects: list[tuple[Any, ...]],
                   ) -> tuple[str, tuple[CodeType, ...]]:
    """The text of two functions that redo a class's recorded effects, and the method code objects they use.

    Why generated code: interpreting a recipe (a loop over its fields and effects, an environment dict of named
    values, a dispatch on each effect's kind) took about 190 thousand instructions per class, most of a
    dataclass's cost at a start that replays fifty of them; the same effects written out as straight-line
    code take a fraction of that.

    ``compute(cls, params, globs, D, FT, CT, codes)`` works out every value (``D``: ``dataclasses``, ``FT``:
    ``FunctionType``, ``CT``: ``CellType``) and changes nothing; any exception from it means the recipe does
    not fit this class (:func:`replay` then leaves it to ``dataclasses``). ``apply(cls, D, values)`` then
    sets each field's resolved name, type, kind and ``kw_only``, and the class attributes, in the recorded
    order. Names in the text are positional (``f0``, ``t0``...) and field names and keys are string literals,
    so nothing a class defines can shadow them.
    """
    codes: list[CodeType] = []
    lines = ["def compute(cls, params, globs, D, FT, CT, codes):",
             "    body = cls.__dict__",
             "    ann = body.get('__annotations__', {})",
             "    MISSING = D.MISSING",
             "    Field = D.Field"]
    index = {name: i for i, (name, _, _, _) in enumerate(field_recipes)}
    if len(index) != len(field_recipes):
        raise Uncacheable("duplicate field")
    for i, (name, _, from_body, _) in enumerate(field_recipes):
        if from_body:
            lines += [f"    f{i} = body[{name!r}]",
                      f"    if not isinstance(f{i}, Field):",
                      f"        raise TypeError({name!r})"]
        else:
            lines.append(f"    f{i} = D.field(default=body.get({name!r}, MISSING))")
        lines.append(f"    t{i} = ann[{name!r}]")

    def value(env_name: str) -> str:
        """The expression of an environment name of :func:`_environment` (guarded where a field may lack it)."""
        if env_name in _FIXED:
            return _FIXED[env_name]
        kind, _, field_name = env_name.partition(":")
        if field_name not in index or kind not in ("t", "d", "f"):
            raise Uncacheable(env_name)
        i = index[field_name]
        if kind == "t":
            return f"t{i}"
        attribute = "default" if kind == "d" else "default_factory"
        return f"_present(f{i}.{attribute}, MISSING)"

    def function(recipe: tuple[Any, ...]) -> str:
        """Lines that make one generated method; returns the variable that holds it."""
        code, name, qualname, defaults, kwdefaults, closure, annotations = recipe
        if type(code) is not CodeType:
            raise Uncacheable("code")
        codes.append(code)
        var = f"fn{len(codes) - 1}"
        defaults_text = "None" if defaults is None else "(" + "".join(value(v) + ", " for v in defaults) + ")"
        closure_text = "(" + "".join(f"CT({value(v)}), " for v in closure) + ")" if closure else "None"
        lines.append(f"    {var} = FT(codes[{len(codes) - 1}], globs, {name!r}, {defaults_text}, {closure_text})")
        if kwdefaults is not None:
            lines.append(f"    {var}.__kwdefaults__ = {{" + "".join(f"{k!r}: {value(v)}, " for k, v in kwdefaults)
                         + "}")
        lines.append(f"    {var}.__qualname__ = {qualname!r}")
        lines.append(f"    {var}.__annotations__ = {{" + "".join(f"{k!r}: {value(v)}, " for k, v in annotations)
                     + "}")
        return var

    updates: list[tuple[str, str | None]] = []     # (key, variable; None: delete)
    for n, effect in enumerate(effects):
        key = str(effect[1])
        if not key.isidentifier() or keyword.iskeyword(key):
            raise Uncacheable(key)
        if effect[0] == "del":
            updates.append((key, None))
            continue
        spec = effect[2]
        what = spec[0]
        var = f"u{n}"
        if what == "fn":
            var = function(spec[1])
        elif what == "fields":
            lines.append(f"    {var} = {{" + "".join(f"{name!r}: f{i}, " for name, i in index.items()) + "}")
        elif what == "params":
            lines.append(f"    {var} = D._DataclassParams(*params[:6])")
        elif what == "const":
            if type(spec[1]) is not tuple or not all(type(v) is str for v in spec[1]):
                raise Uncacheable(key)
            lines.append(f"    {var} = {spec[1]!r}")
        elif what == "rrepr":
            inner = function(spec[1])
            lines += [f"    {var} = D._recursive_repr({inner})", f"    {var}.__qualname__ = {spec[2]!r}"]
        elif what == "env":
            lines.append(f"    {var} = {value(spec[1])}")
        else:
            raise Uncacheable(str(what))
        updates.append((key, var))
    lines.append("    return (" + "".join(f"f{i}, t{i}, " for i in index.values())
                 + "".join(f"{var}, " for _, var in updates if var is not None) + ")")
    lines.append("def apply(cls, D, values):")
    names = [f"f{i}, t{i}" for i in index.values()] + [var for _, var in updates if var is not None]
    if names:
        lines.append("    " + ", ".join(names) + ", = values")
    for i, (name, kind, _, kw_only) in enumerate(field_recipes):
        marker = _KINDS.get(kind)
        if marker is None or (kw_only != _MISSING_TEXT and type(kw_only) is not bool):
            raise Uncacheable(name)
        lines.append(f"    f{i}.name, f{i}.type, f{i}._field_type, f{i}.kw_only = "
                     f"{name!r}, t{i}, D.{marker}, {'D.MISSING' if kw_only == _MISSING_TEXT else kw_only}")
    for key, target in updates:
        lines.append(f"    del cls.{key}" if target is None else f"    cls.{key} = {target}")
    lines.append("    return None")
    return "\n".join(lines) + "\n", tuple(codes)


def _present(value: object, missing: object) -> object:
    """``value``, which the recipe names, unless the class lacks it this time: then the recipe does not fit."""
    if value is missing:
        raise LookupError("a value the recipe names is missing")
    return value


#: What the generated functions see as globals: the builtins and :func:`_present`, nothing of any module.
_GENERATED_GLOBALS: dict[str, Any] = {"__builtins__": builtins, "_present": _present}


def replay(cls: type, params: tuple[Any, ...], recipe: tuple[Any, ...], globs: dict[str, Any]) -> type:
    """Do to ``cls`` what the recorded ``_process_class`` did (its shape was checked by the caller).

    Every value is worked out (the recipe's ``compute``) before the class or any of its ``field()`` objects is
    touched (its ``apply``), so a recipe that does not fit (damaged, or from code this module does not
    expect) changes nothing.

    :raise Uncacheable: the recipe does not fit this class; ``dataclasses`` must make it.
    """
    compute_code, apply_code, codes = recipe
    try:
        compute = FunctionType(compute_code, _GENERATED_GLOBALS)
        values = compute(cls, params, globs, dataclasses, FunctionType, CellType, codes)
    except Exception as err:   # noqa: BLE001 -- any misfit of a cached recipe means "make it the normal way"
        raise Uncacheable(f"recipe: {type(err).__name__}") from None
    FunctionType(apply_code, _GENERATED_GLOBALS)(cls, dataclasses, values)
    abc.update_abstractmethods(cls)
    return cls


def is_recipe(value: object) -> bool:
    """A plausible (shape, recipe) pair as the cache stores it (a damaged entry is ignored)."""
    if not (type(value) is tuple and len(value) == 2 and type(value[0]) is tuple and type(value[1]) is tuple
            and len(value[1]) == 3):
        return False
    compute, apply, codes = value[1]
    return (type(compute) is CodeType and type(apply) is CodeType and type(codes) is tuple
            and compute.co_filename == apply.co_filename == _REPLAY_FILE
            and (compute.co_name, compute.co_argcount, apply.co_name, apply.co_argcount) == ("compute", 7, "apply", 3)
            and all(type(c) is CodeType for c in codes))


__all__ = ["SUPPORTED", "Uncacheable", "is_recipe", "record", "replay", "shape"]
