"""The package's compiled modules in one per-user cache entry, so a start does not look for each one.

Why: importing a module of this package the usual way costs a search (the import system asks each finder,
``stat``s the directory and the candidate files), then the ``.pyc`` file (``stat`` of the source, ``open``,
``fstat``, ``ioctl``, ``read``, ``close``) before any of its code runs: about 100 thousand instructions and six
system calls a module, and ``negotiate`` imports 56 of them (about 4 % of its time, measured end to end).
The compiled code is the same at every start, so it is kept with the rest of the per-user cache
(:mod:`~qemu_evmcs.core.parsecache`: its directory, ownership checks and atomic writes): one entry per place
the package is installed at, an index read at start-up, and each module's code read with one ``pread`` when it
is imported.

What is reused is exactly what Python's own ``.pyc`` gives, no more: at exit, for each module of this package
imported the usual way, the code is taken from the ``.pyc`` Python used (``__cached__``), only if that file is
a timestamp ``.pyc`` (not hash-based: those Python checks by reading the source, which would be the cost) that
is valid for its source at that moment, and only where Python wrote one (``PYTHONDONTWRITEBYTECODE``: nothing
is kept). At import, an entry serves a module only if the parent package's directory is the recorded one and
the source's ``stat`` is unchanged to the nanosecond and the byte (Python's own check is the second and the
byte); otherwise the module is imported the usual way and recorded again. A package (``__init__``) is always
imported the usual way, and so is everything when the cache is off (``QEMU_EVMCS_CACHE_DIR=off``). The entry is
tagged with the exact interpreter build and the optimization level (``-O``); like the ``.pyc`` files and the
dataclass entries of :mod:`~qemu_evmcs.core.classcache`, it is code, under the same ownership checks.

What differs from the usual import: a module's ``__loader__`` and ``__spec__.loader`` are this module's loader
(``__file__``, ``__cached__``, ``__spec__.origin`` and ``__spec__.cached`` are the usual ones). Not seen: an
extension module or a package of the same name put next to a module's source later; the usual import would take
those instead.

Entry layout: 8 bytes (little endian) giving the length of the index, the index (marshalled ``(sys.version,
optimization level, {module: (source path, st_mtime_ns, st_size, offset, length)})``), then the code area:
each module's marshalled code at its offset, counted from the start of that area.
"""

from __future__ import annotations

import atexit
import marshal
import os
import sys
from types import CodeType, ModuleType
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core.parsecache import (MAX_ENTRY_BYTES, cache_dir, checksum, interpreter_entry_path, open_entry,
                                        write_entry_bytes)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

_PACKAGE = __name__.partition(".")[0]
_PREFIX = _PACKAGE + "."
#: The package's directory (where this installation's modules are).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The spec class of the import system (``importlib.machinery.ModuleSpec``, without importing ``importlib``).
_ModuleSpec: Any = type(sys.__spec__)
#: A timestamp ``.pyc`` header: magic (4), flags (4, zero), source mtime (4), source size (4).
_HEADER = 16

#: module -> (source path, st_mtime_ns, st_size, offset, length) of the entry read at start-up.
_index: dict[str, tuple[str, int, int, int, int]] = {}
_fd: int | None = None
#: Where the entry's code area starts (the offsets of :data:`_index` count from there).
_base = 0
_dir: str | None = None
#: How many modules this process took from the entry (the tests read it).
served = 0
#: The package's modules imported before :func:`install` (never served, so never recorded).
_before: frozenset[str] = frozenset()


def _entry_path(where: str) -> str:
    """One entry per interpreter build and per place the package is installed at: a checkout and an installed
    copy run with the same cache directory would otherwise take turns rewriting one entry at every exit."""
    return interpreter_entry_path(where, "module-code", checksum(_ROOT.encode("utf-8", "surrogateescape")))


def _magic() -> bytes | None:
    """The ``.pyc`` magic number of this interpreter (``importlib.util.MAGIC_NUMBER``)."""
    external = sys.modules.get("_frozen_importlib_external")
    magic = getattr(external, "MAGIC_NUMBER", None)
    return magic if type(magic) is bytes else None


class _Loader:
    """Executes a module's code found by :class:`_Finder` (the spec carries it as ``loader_state``)."""

    @staticmethod
    def create_module(spec: Any) -> None:
        return None     # the usual module object

    @staticmethod
    def exec_module(module: ModuleType) -> None:
        global served
        code = module.__spec__.loader_state   # type: ignore[union-attr]
        served += 1
        exec(code, module.__dict__)   # noqa: S102 -- the module's own compiled code, as the import system runs it

    @staticmethod
    def get_code(fullname: str) -> CodeType | None:
        """The module's code: ``runpy`` (``python -m MODULE``) asks the loader for it, and runs it itself."""
        parent = sys.modules.get(fullname.rpartition(".")[0])
        spec = _Finder.find_spec(fullname, getattr(parent, "__path__", None))
        return None if spec is None else spec.loader_state

    @staticmethod
    def get_source(fullname: str) -> str | None:
        """The module's source text (``linecache`` asks for it when it cannot read the file itself)."""
        found = _index.get(fullname)
        if found is None:
            return None
        try:
            with open(found[0], encoding="utf-8") as fh:
                return fh.read()
        except (OSError, UnicodeDecodeError):
            return None


class _Finder:
    """First on ``sys.meta_path``: answers for this package's modules the entry holds and still fit."""

    @staticmethod
    def find_spec(name: str, path: Sequence[str] | None = None, target: object = None) -> Any:
        found = _index.get(name)
        if found is None or _fd is None or not path or name.endswith(".__main__"):
            return None     # (a __main__ module is run by runpy, which reads it itself)
        origin, mtime_ns, size, offset, length = found
        if os.path.join(path[0], name.rpartition(".")[2] + ".py") != origin:
            return None     # another copy of the package (its parent directory differs): the usual import
        try:
            st = os.stat(origin)
            if st.st_mtime_ns != mtime_ns or st.st_size != size:
                return None
            data = os.pread(_fd, length, _base + offset)
            code = marshal.loads(data) if len(data) == length else None
        except (OSError, ValueError, EOFError, TypeError):
            return None
        if type(code) is not CodeType or code.co_filename != origin:
            return None
        spec = _ModuleSpec(name, _Loader, origin=origin, loader_state=code)
        spec.has_location = True
        cached = _cached_path(origin)
        if cached is not None:
            spec.cached = cached
        return spec


def _cached_path(origin: str) -> str | None:
    """Where the import system keeps the ``.pyc`` of ``origin`` (``importlib.util.cache_from_source``)."""
    external = sys.modules.get("_frozen_importlib_external")
    try:
        return str(external.cache_from_source(origin))   # type: ignore[union-attr]
    except (AttributeError, NotImplementedError, ValueError):
        return None


def _read_index(where: str) -> None:
    """Read the entry's index and keep the entry open for the modules' code (one ``pread`` each)."""
    global _fd, _base
    opened = open_entry(_entry_path(where))
    if opened is None:
        return
    fd, st = opened
    try:
        head = os.pread(fd, 8, 0)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < length <= st.st_size - 8:
            raise ValueError("index length")
        tag, optimize, index = marshal.loads(os.pread(fd, length, 8))
        if tag != sys.version or optimize != sys.flags.optimize or type(index) is not dict:
            raise ValueError("another interpreter build")
        area = st.st_size - 8 - length
        for name, found in index.items():
            if (type(name) is str and name.startswith(_PREFIX) and type(found) is tuple and len(found) == 5
                    and type(found[0]) is str and all(type(v) is int for v in found[1:])
                    and 0 <= found[3] and 0 < found[4] and found[3] + found[4] <= area):
                _index[name] = found
    except (OSError, ValueError, EOFError, TypeError):
        os.close(fd)
        _index.clear()
        return
    _fd, _base = fd, 8 + length


def _record(module: ModuleType) -> tuple[str, int, int, bytes] | None:
    """(source path, st_mtime_ns, st_size, marshalled code) of a module imported the usual way, from the
    ``.pyc`` Python used for it, if that is a timestamp ``.pyc`` valid for the source now; else ``None``."""
    spec = getattr(module, "__spec__", None)
    origin = getattr(spec, "origin", None)
    cached = getattr(spec, "cached", None)
    magic = _magic()
    if (type(origin) is not str or type(cached) is not str or not origin.endswith(".py") or magic is None
            or getattr(spec, "submodule_search_locations", None) is not None):
        return None
    try:
        st = os.stat(origin)
        with open(cached, "rb") as fh:
            header = fh.read(_HEADER)
            if (len(header) < _HEADER or header[:4] != magic or int.from_bytes(header[4:8], "little") != 0
                    or int.from_bytes(header[8:12], "little") != int(st.st_mtime) & 0xFFFFFFFF
                    or int.from_bytes(header[12:16], "little") != st.st_size & 0xFFFFFFFF):
                return None     # (a hash-based .pyc, or one Python would not use for this source)
            code = fh.read(MAX_ENTRY_BYTES)
    except OSError:
        return None
    return origin, st.st_mtime_ns, st.st_size, code


def _save() -> None:
    """Write the entry again when this process imported modules of the package the usual way that the entry
    lacks or holds for another version of their source."""
    if _dir is None:
        return
    recorded = {}
    for name, module in list(sys.modules.items()):
        if (not name.startswith(_PREFIX) or name in _before
                or getattr(getattr(module, "__spec__", None), "loader", None) is _Loader):
            continue
        found = _record(module)
        if found is not None and _index.get(name, ())[:3] != found[:3]:
            recorded[name] = found
    if not recorded:
        return
    blobs: dict[str, tuple[str, int, int, bytes]] = {}
    for name, (origin, mtime_ns, size, offset, length) in _index.items():
        if name not in recorded and _fd is not None:
            try:
                data = os.pread(_fd, length, _base + offset)
            except OSError:
                continue
            if len(data) == length:
                blobs[name] = (origin, mtime_ns, size, data)
    blobs.update(recorded)
    index: dict[str, tuple[str, int, int, int, int]] = {}
    codes: list[bytes] = []
    offset = 0
    for name, (origin, mtime_ns, size, data) in sorted(blobs.items()):
        index[name] = (origin, mtime_ns, size, offset, len(data))
        codes.append(data)
        offset += len(data)
    head = marshal.dumps((sys.version, sys.flags.optimize, index))
    body = b"".join(codes)
    if 8 + len(head) + len(body) <= MAX_ENTRY_BYTES:
        write_entry_bytes(_dir, _entry_path(_dir), len(head).to_bytes(8, "little") + head + body)


def install() -> None:
    """Serve the package's modules from the entry (once per process; nothing when the cache is off)."""
    global _dir, _before
    where = cache_dir()
    if where is None or _dir is not None:
        return
    _dir = where
    _before = frozenset(name for name in sys.modules if name.startswith(_PREFIX))
    _read_index(where)
    sys.meta_path.insert(0, _Finder)
    atexit.register(_save)


__all__ = ["install"]
