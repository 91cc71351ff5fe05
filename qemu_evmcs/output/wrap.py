"""Word wrapping of the text answers (``explain``, ``baseline``): the standard library's ``textwrap``.

Why a module: ``textwrap`` compiles its word-splitting patterns when imported, and so imports ``re`` (with
``enum``); imported here with re's stand-in (:func:`~qemu_evmcs.core.regexcache.re_stand_ins`), those patterns
come from the regex cache. Every text answer that wraps imports it from here.
"""

from __future__ import annotations

from qemu_evmcs.core import lazy
from qemu_evmcs.core.regexcache import re_stand_ins
from qemu_evmcs.core.typecheck import TYPE_CHECKING

if TYPE_CHECKING:
    import textwrap
else:
    textwrap = lazy.module_deferring("textwrap", *re_stand_ins())

wrap = textwrap.wrap

__all__ = ["wrap"]
