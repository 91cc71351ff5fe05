"""What of :mod:`typing` this package needs at run time, without importing :mod:`typing`.

Why: importing ``typing`` costs 16 M instructions beyond the ``re`` it imports (a bare interpreter runs
38 M; ``guest-msrs`` ran 252 M with it), and with ``from __future__ import annotations``
(every module here) annotations are never evaluated, so type checkers are the only readers of almost every
name it exports. Modules therefore import typing names under ``if TYPE_CHECKING:``, with this module's
``TYPE_CHECKING`` (``False`` at run time; mypy treats any ``TYPE_CHECKING`` as true, and ruff is told that
this module stands for ``typing``: ``typing-modules`` in ``pyproject.toml``). Ruff's TC004 refuses a name
imported there and used at run time.

The few names that do run are here, each exactly what ``typing``'s does at run time: :func:`cast` returns
its value, :func:`overload` is replaced by the implementation that follows it. Type checkers see
``typing``'s own.

One caveat, checked by ``tests/test_startup_imports.py``: ``dataclasses`` recognises a ``ClassVar``
annotation written as a string only when ``typing`` is imported, so no dataclass here may use one.
"""

from __future__ import annotations

TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import cast as cast
    from typing import overload as overload
else:
    def cast(typ, val):
        """``typing.cast`` at run time: the value itself."""
        return val

    def overload(func):
        """``typing.overload`` at run time, less its registry (which nothing here reads)."""
        return func

__all__ = ["TYPE_CHECKING", "cast", "overload"]
