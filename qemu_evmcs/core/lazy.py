"""The one way a module of this package is imported on first use rather than at start-up.

Why: an interactive command (``guest-msrs``, ``explain``) runs for about 10 ms but used to spend ten times
that importing code it never calls: PyYAML (about a quarter of a start-up) is only needed when a text is not
in the parse cache (:mod:`~qemu_evmcs.core.parsecache`), ``tempfile`` only when an entry is written, each
sub-command module only when that command runs. Import statements inside functions are refused everywhere
(``tests/test_layers.py``: that is how import cycles used to be hidden), so a deferred import goes through
:func:`module` or :func:`proxy`, with the module named by a string literal. ``tests/test_layers.py`` reads
those literals and applies the layer rule to them like to any import (a lazy load may not go *up* either),
and refuses ``importlib.import_module``/``__import__`` anywhere but here. A computed name is allowed only
where ``COMPUTED_LAZY`` in that test lists it, with the reason: ``cli/main.py`` (the sub-command's module,
from its static table; the CLI is the top layer) and ``qemu/cpu.py`` (a model-provider plug-in the user
names, not a module of this package).
"""

from __future__ import annotations

import sys
from types import ModuleType


def module(name: str) -> ModuleType:
    """The module ``name`` (absolute), imported now if no one imported it before (then it is ``sys.modules``'s).

    Through the ``import`` statement's own machinery (``__import__``), as ``importlib.import_module`` does
    for an absolute name, but without importing the ``importlib`` package and ``warnings`` with it (1.9
    million instructions, 1 % of a start: nothing else of a start needs them)."""
    __import__(name)
    return sys.modules[name]


class _Proxy(ModuleType):
    """Stands for a module until an attribute is read: then imports it (:func:`module`) and reads it there."""

    def __getattr__(self, attr: str) -> object:
        return getattr(module(self.__name__), attr)


def proxy(name: str) -> ModuleType:
    """A stand-in for module ``name`` that imports it at the first attribute read (``yaml.YAMLError`` in an
    ``except`` clause is read only when an exception is being handled). For modules that use a library on a
    few paths only (PyYAML in the fleet loader: only for a document the parse cache lacks)::

        if TYPE_CHECKING:          # type checkers see the real module
            import yaml
        else:
            yaml = lazy.proxy("yaml")
    """
    return _Proxy(name)


class StandIn(ModuleType):
    """Sits in ``sys.modules`` for a module while another one is imported that binds it but does not use it
    yet; the first attribute read imports the real module and reads it there. A subclass may answer some
    reads itself (:mod:`~qemu_evmcs.core.regexcache`'s ``re``)."""

    def __getattr__(self, attr: str) -> object:
        return getattr(self.real_module(), attr)

    def placeable(self) -> bool:
        """May this stand in for its module now: nobody imported it, or only this stand-in did (then
        :func:`module_deferring` puts it back for the length of that import)."""
        current = sys.modules.get(self.__name__)
        return current is None or current is self or current is self.__dict__.get("_lazy_real")

    def real_module(self) -> ModuleType:
        """The module this stands for, imported now if it is not yet. Imported while the stand-in is placed
        (:func:`module_deferring`), the stand-in stays there until the end of that import, then leaves
        ``sys.modules`` to the real module."""
        real: ModuleType | None = self.__dict__.get("_lazy_real")
        if real is not None:
            return real
        current = sys.modules.get(self.__name__)
        if current is not None and current is not self:
            return current          # someone else's import: never stood in for (module_deferring)
        if current is self:
            del sys.modules[self.__name__]
        try:
            real = module(self.__name__)
        finally:
            if current is self:
                sys.modules[self.__name__] = self
        self._lazy_real = real      # imported by this stand-in: module_deferring may stand in for it again
        return real


def module_deferring(name: str, *unused: str | StandIn) -> ModuleType:
    """The module ``name``, imported while its imports of the modules ``unused`` bind stand-ins
    (:class:`StandIn`, or the one given) instead of running them. The stand-ins leave ``sys.modules`` when
    ``name`` is imported, so every later importer of those modules gets the real ones; a stand-in itself
    turns into its module at first use.

    Why: ``dataclasses`` imports ``inspect`` (and with it ``ast``, ``dis``, ``tokenize``, ``linecache``: a
    third of an interactive command's start-up over a bare interpreter) and uses it only to write a
    docstring for a class that has none, and ``copy`` (with ``weakref``: 4 million instructions, a tenth of a
    bare interpreter) only in ``asdict`` and ``astuple``. If ``name`` is already imported, nothing is deferred; nor is a
    module of ``unused`` that someone else imported (one its own stand-in imported is stood in for again:
    :mod:`~qemu_evmcs.core.regexcache` records what goes through it).
    """
    if name in sys.modules:
        return module(name)
    placed: list[StandIn] = []
    for item in unused:
        stand_in = StandIn(item) if isinstance(item, str) else item
        if sys.modules.get(stand_in.__name__) is not stand_in and stand_in.placeable():
            sys.modules[stand_in.__name__] = stand_in
            placed.append(stand_in)
    try:
        return module(name)
    finally:
        for stand_in in placed:
            if sys.modules.get(stand_in.__name__) is stand_in:
                real = stand_in.__dict__.get("_lazy_real")
                if real is None:
                    del sys.modules[stand_in.__name__]
                else:       # imported meanwhile (real_module): every later importer gets it
                    sys.modules[stand_in.__name__] = real


__all__ = ["StandIn", "module", "module_deferring", "proxy"]
