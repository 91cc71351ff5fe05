"""The one way qemu-evmcs prints JSON: deterministic, indent 2, one trailing newline.

Key order is the caller's: documents whose order means something (MSRs in
index order, features in registry order, the documented top-level key order)
are built as ordered dicts and printed as built. Pass ``sort_keys=True`` for
mappings whose order carries no meaning, so that two runs (or two Python
versions) always print byte-identical text.
"""

from __future__ import annotations

import sys
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core import lazy

if TYPE_CHECKING:
    from typing import IO


def dumps(obj: object, *, sort_keys: bool = False) -> str:
    """``obj`` as JSON text: indent 2, ASCII only, ``", "``/``": "`` separators, trailing newline.

    :param sort_keys: sort every mapping's keys (for documents whose order carries no meaning).
    :raise TypeError: if ``obj`` holds something JSON cannot encode (a programming error, never input).
    """
    # json (with its regular expressions) is imported on first use: most runs print text (core/lazy.py).
    text: str = lazy.module("json").dumps(obj, indent=2, sort_keys=sort_keys, ensure_ascii=True, allow_nan=False)
    return text + "\n"


def print_json(obj: object, *, sort_keys: bool = False, file: IO[str] | None = None) -> None:
    """Write :func:`dumps` of ``obj`` to ``file`` (default: standard output)."""
    (file or sys.stdout).write(dumps(obj, sort_keys=sort_keys))
