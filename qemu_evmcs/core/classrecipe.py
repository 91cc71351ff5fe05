"""What ``@dataclass`` did to a class, recorded once and replayed at later starts.

Why: with its generated methods already compiled (:mod:`~qemu_evmcs.core.classcache`), ``@dataclass`` still
costs about 0.8 million instructions per class at every start: it re-derives each field from the string
annotations (three regular-expression checks per field), writes the text of every method and builds each
function. ``guest-msrs`` defines 25 dataclasses (19 M instructions, an eighth of its start), ``validate``
58. What the decorator does is a pure function of the class statement (its options, annotations, the
values in its body, which methods it defines itself), so it is done by ``dataclasses`` itself the first
time and its effects are recorded: which attributes it set, deleted or replaced, and for each generated
function its code object, defaults, closure and annotations, each value named by where it came from (a
field's default, default factory or type; the class; ``MISSING``...). A later start whose class statement
has the same *shape* (:func:`shape`) replays those effects, which makes the same class.

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
from collections.abc import Iterable
from types import CellType, FunctionType

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
    return "F" if value is dataclasses._FIELD else "C" if value is dataclasses._FIELD_CLASSVAR else "I"  # type: ignore[attr-defined]


#: A field kind as a recipe names it -> the marker ``dataclasses`` uses (empty where it lacks one: not SUPPORTED).
_KINDS: dict[str, object] = ({"F": dataclasses._FIELD, "C": dataclasses._FIELD_CLASSVAR,  # type: ignore[attr-defined]
                              "I": dataclasses._FIELD_INITVAR} if SUPPORTED else {})  # type: ignore[attr-defined]


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
    env: dict[str, object] = {
        "MISSING": dataclasses.MISSING, "HDF": dataclasses._HAS_DEFAULT_FACTORY,  # type: ignore[attr-defined]
        "object": object, "cls": cls, "FIE": dataclasses.FrozenInstanceError, "None": None,
    }
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


def _make_function(recipe: tuple[Any, ...], env: dict[str, object], globs: dict[str, Any]) -> FunctionType:
    code, name, qualname, defaults, kwdefaults, closure, annotations = recipe
    value = env.__getitem__      # (map over it: every class of every start comes through here)
    fn = FunctionType(code, globs, name, None if defaults is None else tuple(map(value, defaults)),
                      tuple(map(CellType, map(value, closure))) if closure else None)
    if kwdefaults is not None:
        fn.__kwdefaults__ = {k: value(v) for k, v in kwdefaults}
    fn.__qualname__ = qualname
    fn.__annotations__ = {k: value(v) for k, v in annotations}
    return fn


def record(cls: type, before: dict[str, Any]) -> tuple[Any, ...]:
    """The recipe of what ``_process_class`` did to ``cls`` (``before``: a copy of its ``__dict__`` then).

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
    return (tuple(field_recipes), tuple(effects))


def replay(cls: type, params: tuple[Any, ...], recipe: tuple[Any, ...], globs: dict[str, Any]) -> type:
    """Do to ``cls`` what the recorded ``_process_class`` did (its shape was checked by the caller).

    Every value is worked out before the class or any of its ``field()`` objects is touched, so a recipe that
    does not fit (damaged, or from code this module does not expect) changes nothing.

    :raise Uncacheable: the recipe does not fit this class; ``dataclasses`` must make it.
    """
    try:
        fields, states, updates = _plan(cls, params, recipe, globs)
    except Uncacheable:
        raise
    except Exception as err:   # noqa: BLE001 -- any misfit of a cached recipe means "make it the normal way"
        raise Uncacheable(f"recipe: {type(err).__name__}") from None
    for f, state in zip(fields.values(), states, strict=True):
        f.name, f.type, f._field_type, f.kw_only = state
    for key, value in updates:
        if value is _DELETE:
            delattr(cls, key)
        else:
            setattr(cls, key, value)
    abc.update_abstractmethods(cls)
    return cls


#: An update of :func:`_plan` that deletes the attribute.
_DELETE = object()


def _plan(cls: type, params: tuple[Any, ...], recipe: tuple[Any, ...], globs: dict[str, Any],
          ) -> tuple[dict[str, Any], list[tuple[Any, ...]], list[tuple[str, Any]]]:
    """(the field objects, each one's (name, type, kind, kw_only), the attribute updates in order) of a
    recipe, without changing anything."""
    field_recipes, effects = recipe
    body = cls.__dict__
    annotations = body.get("__annotations__", {})
    missing = dataclasses.MISSING
    field_type = dataclasses.Field
    fields: dict[str, Any] = {}
    states: list[tuple[Any, ...]] = []
    for name, kind, from_body, kw_only in field_recipes:
        if name in fields:
            raise Uncacheable(name)
        if from_body:
            f = body[name]
            if not isinstance(f, field_type):
                raise Uncacheable(name)
        else:
            f = dataclasses.field(default=body.get(name, missing))
        if kw_only != _MISSING_TEXT and type(kw_only) is not bool:
            raise Uncacheable(name)
        # name, type, kind, kw_only as _get_field resolved them
        states.append((name, annotations[name], _KINDS[kind], missing if kw_only == _MISSING_TEXT else kw_only))
        fields[name] = f
    env = _environment(cls, [(n, annotations[n], f.default, f.default_factory) for n, f in fields.items()])
    updates: list[tuple[str, Any]] = []
    for effect in effects:
        if effect[0] == "del":
            updates.append((str(effect[1]), _DELETE))
            continue
        spec = effect[2]
        what = spec[0]
        value: Any
        if what == "fn":
            value = _make_function(spec[1], env, globs)
        elif what == "fields":
            value = fields
        elif what == "params":
            value = dataclasses._DataclassParams(*params[:6])  # type: ignore[attr-defined]
        elif what == "const":
            value = spec[1]
        elif what == "rrepr":
            value = dataclasses._recursive_repr(_make_function(spec[1], env, globs))  # type: ignore[attr-defined]
            value.__qualname__ = spec[2]
        elif what == "env":
            value = env[spec[1]]
        else:
            raise Uncacheable(str(what))
        updates.append((str(effect[1]), value))
    return fields, states, updates


def is_recipe(value: object) -> bool:
    """A plausible (shape, recipe) pair as the cache stores it (a damaged entry is ignored)."""
    return (type(value) is tuple and len(value) == 2 and type(value[0]) is tuple and type(value[1]) is tuple
            and len(value[1]) == 2)


__all__ = ["SUPPORTED", "Uncacheable", "is_recipe", "record", "replay", "shape"]
