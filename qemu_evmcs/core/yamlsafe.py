"""The YAML boundary: safe loaders that refuse what PyYAML would otherwise turn into a traceback or a lie.

PyYAML's safe loaders already refuse Python objects; two holes were left, both reproduced (issue 14):

- **Huge integers.** ``family: 999...`` with more than 4,300 digits makes ``int()`` raise ``ValueError``
  (CPython's integer-string limit) from inside the constructor: not a ``YAMLError``, so it escaped every
  ``except yaml.YAMLError`` as a traceback, in every command that reads profiles and in the simulator.
  Every value this tool reads fits in 64 bits (at most 66 characters as ``0b...``), so an integer scalar
  longer than :data:`MAX_INT_CHARS` is refused as a ``ConstructorError`` with its line.
- **Duplicate keys.** YAML says mapping keys are unique, PyYAML keeps the last one silently: a profile
  with ``vendor: GenuineIntel`` and later ``vendor: AuthenticAMD`` became AMD. :class:`StrictSafeLoader`
  refuses a repeated key at its line (merge keys ``<<`` are YAML's explicit way to override and stay
  allowed).

Both are ``yaml.constructor.ConstructorError``s, so callers' existing ``except yaml.YAMLError`` handlers
turn them into one ``error: FILE:LINE: ...`` line.
"""

from __future__ import annotations

from qemu_evmcs.core.typecheck import TYPE_CHECKING

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

from qemu_evmcs.core.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

def yaml_error(err: yaml.YAMLError, path: str) -> InputError:
    """A PyYAML error as the one ``error:`` line: its problem (or first line) and, where known, its line."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return InputError(f"invalid YAML: {problem}", file=path, line=(mark.line + 1) if mark is not None else None)


def key_lines(node: yaml.Node, _prefix: tuple[str, ...] = (),
              _seen: set[int] | None = None) -> Iterator[tuple[tuple[str, ...], int]]:
    """Every mapping key of a composed (not constructed) document: (key path, 1-based line), in document order
    (a key, then the keys under it); for the error lines of profiles and model definitions.

    Each node is walked once: an alias (``*a``) is the same node object as its anchor, and following it again
    would expand a "billion laughs" document exponentially (a 25-line model definition hung ``validate``).
    """
    seen = set() if _seen is None else _seen
    if isinstance(node, yaml.MappingNode) and id(node) not in seen:
        seen.add(id(node))
        for k, v in node.value:
            path = (*_prefix, str(k.value))
            yield path, k.start_mark.line + 1
            yield from key_lines(v, path, seen)


#: Longest integer scalar accepted (``0b`` + 64 binary digits, with room for ``_`` separators).
MAX_INT_CHARS = 100

_INT_TAG = "tag:yaml.org,2002:int"


def construct_bounded_int(loader: Any, node: yaml.ScalarNode) -> Any:
    """``SafeConstructor.construct_yaml_int``, refusing scalars longer than :data:`MAX_INT_CHARS` first."""
    text = str(node.value)
    if len(text) > MAX_INT_CHARS:
        raise ConstructorError(None, None, f"an integer of {len(text)} characters (at most {MAX_INT_CHARS})",
                               node.start_mark)
    return SafeConstructor.construct_yaml_int(loader, node)


def refuse_duplicate_keys(node: yaml.MappingNode) -> None:
    """Raise ``ConstructorError`` at the second occurrence of a (scalar) key of ``node``.

    The message names the key and the error's mark is the repeated key's line; it does not quote the first
    line, because the fleet loader parses documents cut out of a file (their own line numbers differ from
    the file's, and only the mark is shifted back).
    """
    seen: set[tuple[str, object]] = set()
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = (key_node.tag, key_node.value)
        if key in seen:
            raise ConstructorError(None, None, f"duplicate key {key_node.value!r} (a mapping's keys must be "
                                   "unique)", key_node.start_mark)
        seen.add(key)


class BoundedSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with bounded integers (duplicate keys left to the caller: ``validate`` reports
    them as findings)."""


BoundedSafeLoader.add_constructor(_INT_TAG, construct_bounded_int)


class StrictSafeLoader(BoundedSafeLoader):
    """``yaml.SafeLoader`` with bounded integers and unique keys (see the module docstring)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        refuse_duplicate_keys(node)
        return super().construct_mapping(node, deep=deep)



class BoundedCSafeLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's ``CSafeLoader`` (when present) with bounded integers, for the fleet loader's fast path
    (duplicate keys there are caught by the full parse of every new document shape)."""


BoundedCSafeLoader.add_constructor(_INT_TAG, construct_bounded_int)
