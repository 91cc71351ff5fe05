"""The YAML half of reading host profiles: composing with line numbers, depth-limited, strict safe loading.

Why apart from :mod:`~qemu_evmcs.core.profile`: importing PyYAML costs about a quarter of an interactive
command's start-up, and a profile that was read before comes from the per-user parse cache
(:mod:`~qemu_evmcs.core.parsecache`) without any YAML code. ``profile.py`` therefore loads this module
only on a cache miss or for a multi-document stream (:mod:`~qemu_evmcs.core.lazy`); what it returns is
plain data (the cache stores it) plus each document's key->line map and first line.
"""

from __future__ import annotations

import itertools
from qemu_evmcs.core.typecheck import TYPE_CHECKING
from collections.abc import Iterator

import yaml

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.yamlfast import HAVE_LIBYAML, CComposeSafeLoader
from qemu_evmcs.core.yamlsafe import StrictSafeLoader, key_lines, yaml_error

if TYPE_CHECKING:
    from typing import Any

#: Deepest YAML nesting accepted; a profile needs 2 levels. Deeper input is refused while composing, before
#: PyYAML's recursive composer (and its scanner's per-level bookkeeping) can take seconds or hit the recursion limit.
MAX_YAML_DEPTH = 32


class _DepthLimit:
    """Refuse nesting deeper than :data:`MAX_YAML_DEPTH` while composing (a mixin before a Composer)."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[attr-defined]
                raise yaml.composer.ComposerError(None, None, f"nesting deeper than {MAX_YAML_DEPTH} levels",
                                                  mark)
            return super().compose_node(parent, index)  # type: ignore[misc, no-any-return]
        finally:
            self._depth -= 1


class _PyDepthLimitedLoader(_DepthLimit, StrictSafeLoader):
    """The pure-Python safe loader, depth-limited: its error messages are the ones users see."""


if HAVE_LIBYAML:
    class _DepthLimitedLoader(_DepthLimit, CComposeSafeLoader):
        """The depth-limited composer on libyaml's C scanner and parser (:mod:`~qemu_evmcs.core.yamlfast`):
        about 7x faster than the pure-Python loader on a profile. Any YAML error is reported by re-reading
        the text with :class:`_PyDepthLimitedLoader`, so messages do not depend on libyaml."""
else:  # pragma: no cover - PyYAML built without libyaml
    _DepthLimitedLoader = _PyDepthLimitedLoader  # type: ignore[misc, assignment]


class _RawFloat(float):
    """A YAML float that remembers how it was written: ``kernel: 5.10`` must not become release 5.1."""

    raw: str


class _ProfileLoader(StrictSafeLoader):
    """The safe loader, except that floats keep their source text (see :class:`_RawFloat`)."""


def _construct_raw_float(loader: yaml.SafeLoader, node: yaml.Node) -> float:
    value = _RawFloat(loader.construct_yaml_float(node))  # type: ignore[arg-type]
    value.raw = str(node.value)
    return value


_ProfileLoader.add_constructor("tag:yaml.org,2002:float", _construct_raw_float)


def iter_documents(text: str, path: str) -> Iterator[tuple[object, dict[str, int]]]:
    """Each YAML document of ``text`` with its key->line map (safe loader only)."""
    for data, lines, _ in _iter_documents(text, path):
        yield data, lines


def _iter_documents(text: str, path: str) -> Iterator[tuple[object, dict[str, int], int]]:
    """:func:`iter_documents` plus each document's 1-based first line; empty documents included."""
    done = 0
    try:
        for item in _compose_documents(text, fast=True):
            done += 1
            yield item
        return
    except yaml.YAMLError as err:
        if _DepthLimitedLoader is _PyDepthLimitedLoader:  # pragma: no cover - PyYAML without libyaml
            raise yaml_error(err, path) from None
    # The fast loader refused something: read it again with the pure-Python loader for its message (and
    # for anything libyaml refuses that PyYAML accepts), resuming after the documents already given.
    try:
        for i, item in enumerate(_compose_documents(text, fast=False)):
            if i >= done:
                yield item
    except yaml.YAMLError as err:
        raise yaml_error(err, path) from None
    except RecursionError:
        raise InputError("YAML nesting too deep", file=path) from None


def _compose_documents(text: str, *, fast: bool) -> Iterator[tuple[object, dict[str, int], int]]:
    nodes = (yaml.compose_all(text, Loader=_DepthLimitedLoader) if fast
             else yaml.compose_all(text, Loader=_PyDepthLimitedLoader))
    for node in nodes:
        if node is None:
            continue
        lines = {".".join(path): line for path, line in key_lines(node)}   # dotted key path -> line
        loader = _ProfileLoader("")
        try:
            data = loader.construct_document(node)
        finally:
            loader.dispose()
        yield data, lines, node.start_mark.line + 1


def first_documents(text: str, path: str, n: int) -> list[tuple[object, dict[str, int], int]]:
    """The first ``n`` documents of ``text`` (data, key->line map, first line); nothing after them is composed."""
    return list(itertools.islice(_iter_documents(text, path), n))
