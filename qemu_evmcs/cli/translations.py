"""argparse's own words without importing ``gettext`` (and ``locale``) where no message catalog can exist.

Why: argparse translates its own words ("positional arguments", "options", "show this help message and
exit", "usage: ") with ``gettext.gettext``, six times to build a command's two parsers. Each call searches the
message catalogs anew (``gettext.find``: the language from the environment, ``locale.normalize`` of it, a
``stat`` per candidate file), and the first imports ``gettext`` and ``locale``: together about 3 % of an
interactive command's start. The answer is known without asking: ``gettext`` looks for a catalog of its
default domain only under its default directory, ``sys.base_prefix/share/locale``, unless a program calls
``textdomain`` or ``bindtextdomain`` (both need the real module). Where that directory does not exist (this
package's own Python builds, pyenv's, most venvs' base interpreters), ``gettext.gettext(m)`` returns ``m`` and
``ngettext(s, p, n)`` returns ``s`` for ``n == 1`` and ``p`` otherwise, whatever the language; that is what
:data:`GETTEXT` answers then. Anywhere else, and as soon as anyone has imported the real ``gettext`` (its
domain and directories then apply), it asks the real module, imported as before with ``re``'s stand-in
(:mod:`~qemu_evmcs.core.regexcache`), ``locale`` first.

Placed by :func:`~qemu_evmcs.core.lazy.module_deferring` only while ``argparse`` is imported
(``cli/main.py``): argparse binds ``gettext`` and ``ngettext`` from it; everyone else gets the real module.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

from qemu_evmcs.core import lazy
from qemu_evmcs.core.regexcache import re_stand_ins

#: Where ``gettext`` looks for catalogs of a domain nobody bound elsewhere (its ``_default_localedir``).
LOCALEDIR = os.path.join(sys.base_prefix, "share", "locale")


class _GettextStandIn(lazy.StandIn):
    """``gettext`` as argparse uses it: :meth:`gettext` and :meth:`ngettext` (anything else: the real module)."""

    def gettext(self, message: str) -> str:
        """``gettext.gettext(message)``."""
        real = self._catalogs()
        return message if real is None else str(real.gettext(message))

    def ngettext(self, msgid1: str, msgid2: str, n: int) -> str:
        """``gettext.ngettext(msgid1, msgid2, n)``."""
        real = self._catalogs()
        if real is None:
            return msgid1 if n == 1 else msgid2
        return str(real.ngettext(msgid1, msgid2, n))

    def __getattr__(self, attr: str) -> object:
        # "from gettext import gettext" asks a module for __path__ (is it a package?) before it reads the
        # names: gettext is a plain module, so the answer is known without importing it.
        if attr == "__path__":
            raise AttributeError(attr)
        return super().__getattr__(attr)

    def _catalogs(self) -> ModuleType | None:
        """The real ``gettext`` to ask, or ``None`` where no catalog can be found."""
        current = sys.modules.get("gettext")
        if current is self:                 # asked while argparse is being imported
            return self.real_module()
        if current is not None:             # imported by someone: their textdomain/bindtextdomain apply
            return current
        if not os.path.isdir(LOCALEDIR):
            return None
        return real_gettext()


def real_gettext() -> ModuleType:
    """The real ``gettext``, imported (if no one did) with ``re``'s stand-in, ``locale`` first: ``gettext.find``
    imports ``locale``, and both import ``re`` only for patterns the regex cache holds."""
    lazy.module_deferring("locale", *re_stand_ins())
    return lazy.module_deferring("gettext", *re_stand_ins())


#: The stand-in :func:`~qemu_evmcs.core.lazy.module_deferring` places for ``gettext`` while argparse is imported.
GETTEXT = _GettextStandIn("gettext")

__all__ = ["GETTEXT", "LOCALEDIR", "real_gettext"]
