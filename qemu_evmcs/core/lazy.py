"""The one way a module of this package is imported on first use rather than at start-up.

Why: an interactive command (``guest-msrs``, ``explain``) runs for about 10 ms but used to spend ten times
that importing code it never calls: PyYAML (about a quarter of a start-up) is only needed when a text is not
in the parse cache (:mod:`~qemu_evmcs.core.parsecache`), ``tempfile`` only when an entry is written, each
sub-command module only when that command runs. Import statements inside functions are refused everywhere
(``tests/test_layers.py``: that is how import cycles used to be hidden), so a deferred import goes through
:func:`module`, with the module named by a string literal. ``tests/test_layers.py`` reads those literals
and applies the layer rule to them like to any import (a lazy load may not reach *up* the layers either),
and refuses ``importlib.import_module``/``__import__`` anywhere but here. Only ``cli/main.py`` passes a
computed name (the sub-command's module, from its static table); the CLI is the top layer.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def module(name: str) -> ModuleType:
    """The module ``name``, imported now if no one imported it before (then it is ``sys.modules``'s)."""
    return importlib.import_module(name)


__all__ = ["module"]
