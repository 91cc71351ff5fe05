"""PyYAML's composer on libyaml's C scanner and parser: node trees (with line marks) about 7x faster.

Why: commands that need *where* each key is (line numbers for errors, duplicate-key checks) compose node
trees, and PyYAML's pure-Python scanner is most of that cost (1.7 ms for a host profile, ~35 ms for a
model definition file). libyaml's ``CSafeLoader`` scans and parses in C but composes with a recursive C
routine that cannot be limited; :class:`CComposeSafeLoader` keeps PyYAML's Python composer (so subclasses
can limit nesting, as ``core/profile.py`` does) and takes the events from libyaml. The nodes and marks are
the pure-Python loader's (only a plain scalar's ``style`` is ``''`` instead of ``None``). libyaml's error
messages differ from PyYAML's, so callers re-read a text that fails with ``yaml.SafeLoader`` to report
the error users have always seen. Without libyaml this is ``yaml.SafeLoader`` itself.
"""

from __future__ import annotations

from qemu_evmcs.core.typecheck import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from typing import Any

_CSafeLoader: Any = getattr(yaml, "CSafeLoader", None)

if _CSafeLoader is not None:
    class CComposeSafeLoader(yaml.composer.Composer, _CSafeLoader):  # type: ignore[misc]
        """Python composer, C scanner/parser; constructs nothing itself beyond the safe constructor."""

        def __init__(self, stream: str) -> None:
            _CSafeLoader.__init__(self, stream)
            yaml.composer.Composer.__init__(self)

    HAVE_LIBYAML = True
else:  # pragma: no cover - PyYAML built without libyaml
    CComposeSafeLoader = yaml.SafeLoader  # type: ignore[misc, assignment]
    HAVE_LIBYAML = False

__all__ = ["HAVE_LIBYAML", "CComposeSafeLoader"]
