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

import importlib
import sys
from types import ModuleType


def module(name: str) -> ModuleType:
    """The module ``name``, imported now if no one imported it before (then it is ``sys.modules``'s)."""
    return importlib.import_module(name)


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


class _StandIn(ModuleType):
    """Sits in ``sys.modules`` for a module while another one is imported that binds it but does not use it
    yet; the first attribute read imports the real module (then ``sys.modules``'s) and reads it there."""

    def __getattr__(self, attr: str) -> object:
        real = sys.modules.get(self.__name__)
        if real is None or real is self:
            if real is self:
                del sys.modules[self.__name__]
            real = importlib.import_module(self.__name__)
        return getattr(real, attr)


def module_deferring(name: str, unused: str) -> ModuleType:
    """The module ``name``, imported while its import of ``unused`` binds a stand-in (:class:`_StandIn`)
    instead of running ``unused``. The stand-in leaves ``sys.modules`` when ``name`` is imported, so every
    later importer of ``unused`` gets the real module; the stand-in itself turns into it at first use.

    Why: ``dataclasses`` imports ``inspect`` (and with it ``ast``, ``dis``, ``tokenize``, ``linecache``: a
    third of an interactive command's start-up over a bare interpreter) and uses it only to write a
    docstring for a class that has none. If ``unused`` or ``name`` is already imported, nothing is deferred.
    """
    if name in sys.modules or unused in sys.modules:
        return module(name)
    stand_in = _StandIn(unused)
    sys.modules[unused] = stand_in
    try:
        return module(name)
    finally:
        if sys.modules.get(unused) is stand_in:
            del sys.modules[unused]


__all__ = ["module", "module_deferring", "proxy"]
