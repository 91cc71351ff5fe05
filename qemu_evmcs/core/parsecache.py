"""A per-user cache of parsed YAML (plain data only), addressed by content, so a command does not re-parse
the same text at every start.

Why: every command parses ``registry.yaml`` and ``eras.yaml`` (about a fifth of an interactive command's
start-up, even with libyaml) and usually a host profile, and these texts almost never change. The cache
maps *what was parsed and how* to the result:

- an entry holds what was parsed and how next to the result, and a hit needs both to be *equal*: the text
  itself, and the code identity (a format tag, the parser's name, the interpreter's version, PyYAML's
  identity (:func:`yaml_id`: found without importing it, since a hit must not pay PyYAML's import), and the
  length and two checksums, CRC-32 and Adler-32, of each source file of the code that parses
  (``parser_files``: a changed parser is a different identity)). So an edited data file, a changed loader
  or another PyYAML can never be served an old result: there is nothing to invalidate, only entries nobody
  asks for any more. The file name is only an address (checksums of the identity and of the text): two
  texts that share it (by chance, or made to by whoever wrote one of them) take turns in one file, and
  neither is ever served the other's result. Why checksums and not SHA-256: importing :mod:`hashlib`
  loads OpenSSL, 12 million instructions, the largest single import of an interactive command, and a hit
  compares the text anyway. The checksums of the parser files guard against accidents (an upgrade), not
  adversaries: whoever can rewrite the package's sources does not need the cache;
- values are stored with :mod:`marshal` and only when they are plain data (dict, list, tuple, str, int,
  float, bool, None; no subclasses), so loading one runs no code;
- entries live in ``$QEMU_EVMCS_CACHE_DIR``, else ``$XDG_CACHE_HOME/qemu-evmcs/parsed``, else
  ``~/.cache/qemu-evmcs/parsed`` (created mode 0700; no cache when neither is an absolute path);
  ``QEMU_EVMCS_CACHE_DIR=off`` turns the cache off. An
  entry is read only if it is a regular file owned by this user and writable by no one else; it is
  written to a temporary file and renamed into place, so readers never see half an entry. Any failure
  (read-only home, full disk, a damaged entry) falls back to parsing: the cache never changes an answer
  or an error, it only saves time. Nothing of it is shipped or committed.

The cache is bounded on disk (issue 14: a fleet of a million distinct texts must not write a million files
into a home directory): at most :data:`MAX_ENTRIES` entries and :data:`MAX_BYTES` bytes. Why those values:
everything bundled is 56 entries and 0.6 MB (measured in an empty cache: every bundled profile through
``host show`` and ``explain``, ``fleet import``, ``validate``, ``compare-designs``, ``baseline``, ``report``;
package data, profiles, the fleet loader's first documents and :mod:`classcache`'s dataclass code), each
upgrade of the package or PyYAML adds as many under new keys, and a realistic fleet has tens to hundreds of
distinct first documents (the fleet loader caches at most 512 per run,
``qemu_evmcs.fleet.loader.MAX_CACHED_FIRST``). 4,096 entries and 64 MiB keep all of that for many fleets and
versions, while a runaway costs at most 64 MiB of disk. The price is a scan of the directory (~5 us an entry:
20 ms at 4,096 entries on the shared build machine) at a process's first write and every 256 writes.
Pruning is only on the *write* path (a hit pays nothing for it): a process prunes at its first write and then
after every :data:`PRUNE_EVERY` writes or :data:`PRUNE_BYTES` written, each time down to ``PRUNE_EVERY``
entries and ``PRUNE_BYTES`` bytes below the caps, so one process never leaves more than the caps (several
writing at once: at most ``PRUNE_EVERY`` entries more each, until one of them prunes). It removes the least
recently used entries first, by ``max(atime, mtime)``: the hit path touches nothing, so recency is what the file
system records (Linux's default ``relatime`` refreshes the atime at the first read after a write and then at
most daily; on a ``noatime`` mount the order is by write time, oldest written first). Pruning is safe
against other processes doing the same: an entry that vanishes between the listing and its ``stat`` or
``unlink`` is skipped, and a cache directory where nothing can be removed (read-only, permissions) stops the
prune quietly. Temporary files of killed writers older than an hour are removed too. Only ``*.marshal``
regular files owned by this user are ever removed.
"""

from __future__ import annotations

import functools
import marshal
import os
import stat
import sys
import zlib
from collections.abc import Callable, Sequence
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core import lazy

if TYPE_CHECKING:
    from typing import Any, TypeVar

    T = TypeVar("T")

#: Bump when the layout of an entry changes.
CACHE_FORMAT = "qemu-evmcs-parsed-2"
#: Texts longer than this are parsed every time (fleets go through the fleet loader, not through here).
MAX_CACHED_TEXT = 1024 * 1024
#: Entries larger than this are ignored.
MAX_ENTRY_BYTES = 16 * 1024 * 1024
#: At most this many entries stay in the cache directory (see the module doc for why this value).
MAX_ENTRIES = 4096
#: At most this many bytes of entries stay in the cache directory.
MAX_BYTES = 64 * 1024 * 1024
#: A process prunes after this many writes (and at its first), down to this many entries below the cap.
PRUNE_EVERY = 256
#: ... or after writing this many bytes, down to this many bytes below the cap.
PRUNE_BYTES = 8 * 1024 * 1024
#: A temporary file older than this (seconds) belongs to a killed writer.
STALE_TMP_SECONDS = 3600

#: (writes, bytes) since this process last pruned; ``None``: it has not pruned yet.
_unpruned: list[int] | None = None

_PLAIN = (str, int, float, bool, type(None))


def core_sources(*names: str) -> tuple[str, ...]:
    """Paths of modules of this package's ``core`` layer, for ``parser_files`` (the YAML readers most parsers use)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return tuple(os.path.join(here, n) for n in names)


def cache_dir() -> str | None:
    """Where entries live, or ``None`` when the cache is off."""
    env = os.environ.get("QEMU_EVMCS_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "no") else env
    # Only absolute places: a relative XDG_CACHE_HOME is invalid (XDG Base Directory spec), and without a home
    # directory expanduser leaves "~"; either would put a cache tree in whatever directory the command runs in.
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "qemu-evmcs", "parsed") if os.path.isabs(base) else None


def checksum(data: bytes) -> str:
    """Length, CRC-32 and Adler-32 of ``data``: tells versions of a file apart (not a digest against forgery:
    see the module doc for where that matters and what is compared instead)."""
    return f"{len(data):x}-{zlib.crc32(data):08x}{zlib.adler32(data):08x}"


@functools.cache
def _code_id(parser: str, parser_files: tuple[str, ...], yaml_version: str) -> str | None:
    """What names the parsing code (compared whole on a hit); ``None`` if a source file cannot be read."""
    parts = [CACHE_FORMAT, parser, yaml_version, sys.version]
    for path in parser_files:
        try:
            with open(path, "rb") as fh:
                parts.append(checksum(fh.read()))
        except OSError:
            return None
    return "\0".join(parts)


def _path_finder() -> Any:
    """importlib's ``PathFinder`` (what finds modules on ``sys.path``), without importing the ``importlib`` package
    and ``warnings`` with it: CPython keeps its import system loaded as ``_frozen_importlib_external``."""
    finder = getattr(sys.modules.get("_frozen_importlib_external"), "PathFinder", None)
    return finder if finder is not None else lazy.module("importlib.machinery").PathFinder


@functools.cache
def yaml_id() -> str:
    """PyYAML's identity for cache keys, found without importing PyYAML (its import is about a quarter of an
    interactive command's start-up, and a cache hit needs none of it): the :func:`checksum` of ``yaml/__init__.py``
    (which carries ``__version__``) and whether libyaml's binding ``yaml/_yaml*`` sits next to it (the loaders
    use it when present). ``""`` if PyYAML is not found (parsing will then fail as it always did)."""
    yaml_module = sys.modules.get("yaml")
    origin = getattr(yaml_module, "__file__", None)
    if origin is None:
        spec = _path_finder().find_spec("yaml")
        origin = spec.origin if spec is not None else None
    if origin is None:
        return ""
    try:
        with open(origin, "rb") as fh:
            sums = checksum(fh.read())
        libyaml = any(n.startswith("_yaml") for n in os.listdir(os.path.dirname(origin)))
    except OSError:
        return ""
    return f"{sums}-{'libyaml' if libyaml else 'pure'}"


def is_plain(value: object) -> bool:
    """Only exact built-in containers and scalars (what marshal restores exactly, with no code run).

    Each container is visited once (an explicit stack and the ids seen): a YAML "billion laughs" document
    constructs a small graph of shared containers that a naive recursive walk would expand exponentially.
    """
    seen: set[int] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t in _PLAIN:
            continue
        if t is not dict and t is not list and t is not tuple:
            return False
        if id(v) in seen:
            continue
        seen.add(id(v))
        if t is dict:
            stack.extend(v.keys())  # type: ignore[attr-defined]
            stack.extend(v.values())  # type: ignore[attr-defined]
        else:
            stack.extend(v)  # type: ignore[arg-type]
    return True


def cached_parse(text: str, parse: Callable[[str], T], *, parser: str, parser_files: Sequence[str],
                 yaml_version: str) -> T:
    """``parse(text)``, from the cache when this text was parsed by this code before.

    ``parse`` must be a pure function of ``text`` implemented by ``parser_files``; its exceptions propagate
    (nothing is cached for them). A result that is not plain data (:func:`is_plain`) is returned uncached.
    """
    where = cache_dir()
    code = _code_id(parser, tuple(parser_files), yaml_version) if where is not None else None
    if where is None or code is None or len(text) > MAX_CACHED_TEXT:
        return parse(text)
    address = checksum(code.encode("utf-8", "surrogatepass")) + checksum(text.encode("utf-8", "surrogatepass"))
    path = os.path.join(where, f"{parser}-{address}.marshal")
    hit, entry = read_entry(path)
    if hit and type(entry) is tuple and len(entry) == 3 and entry[0] == code and entry[1] == text:
        return entry[2]  # type: ignore[no-any-return]
    value = parse(text)
    if is_plain(value):
        write_entry(where, path, (code, text, value))
    return value


def interpreter_entry_path(where: str, kind: str, name: str = "") -> str:
    """Where an entry that holds this interpreter build's own objects (code, regex programs) lives: ``kind``,
    the interpreter's cache tag, a checksum of ``sys.version`` and ``name``. The file name is only an address:
    such entries store ``sys.version`` and their readers compare it whole."""
    tag = checksum(sys.version.encode())
    suffix = f"-{name}" if name else ""
    return os.path.join(where, f"{kind}-{sys.implementation.cache_tag}-{tag}{suffix}.marshal")


def open_entry(path: str) -> tuple[int, os.stat_result] | None:
    """An open file descriptor and ``fstat`` of a cache entry that may be read: a regular file owned by this
    user, writable by no one else, at most :data:`MAX_ENTRY_BYTES`; else ``None``. The caller closes it.

    Opened without following a symbolic link and without blocking (a FIFO put in place of an entry is refused
    by the ``fstat`` check, never waited on)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022
            or st.st_size > MAX_ENTRY_BYTES):
        os.close(fd)
        return None
    return fd, st


def read_entry(path: str) -> tuple[bool, Any]:
    """(found, value) of a cache entry (:func:`open_entry` says which may be read); anything else (or a damaged
    entry) is ``(False, None)``."""
    opened = open_entry(path)
    if opened is None:
        return False, None
    fd, st = opened
    try:
        # os.read of the size fstat gave (not a file object's read(MAX_ENTRY_BYTES + 1), which allocates
        # 16 MiB for every entry): a start reads about twenty entries. A file that grew is read to its end.
        parts: list[bytes] = []
        size = 0
        while chunk := os.read(fd, max(st.st_size + 1 - size, 65536)):
            parts.append(chunk)
            size += len(chunk)
            if size > MAX_ENTRY_BYTES:
                return False, None
        return True, marshal.loads(b"".join(parts))
    except (OSError, ValueError, EOFError, TypeError):
        return False, None
    finally:
        os.close(fd)


def write_entry(where: str, path: str, value: Any) -> None:
    """Write an entry atomically (a temporary file renamed into place); failures only cost time."""
    try:
        data = marshal.dumps(value)
    except ValueError:
        return
    write_entry_bytes(where, path, data)


def write_entry_bytes(where: str, path: str, data: bytes) -> None:
    """:func:`write_entry` of bytes already laid out (:mod:`~qemu_evmcs.core.modulecache`'s entry)."""
    try:
        os.makedirs(where, mode=0o700, exist_ok=True)
        # tempfile (with random, shutil...) is imported only here, when an entry is written (lazy.py).
        fd, tmp = lazy.module("tempfile").mkstemp(prefix=".tmp-", dir=where)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except (OSError, ValueError):
        return  # a read-only or full cache directory only costs the time it would have saved
    _written(where, len(data))


def _written(where: str, size: int) -> None:
    """Count a write; prune when this process has not yet, or has written enough since it last did."""
    global _unpruned
    if _unpruned is not None:
        _unpruned[0] += 1
        _unpruned[1] += size
        if _unpruned[0] < PRUNE_EVERY and _unpruned[1] < PRUNE_BYTES:
            return
    _unpruned = [0, 0]
    prune(where, max_entries=max(0, MAX_ENTRIES - PRUNE_EVERY), max_bytes=max(0, MAX_BYTES - PRUNE_BYTES))


def prune(where: str, *, max_entries: int, max_bytes: int) -> int:
    """Remove the least recently used entries of ``where`` (by ``max(atime, mtime)``) until at most
    ``max_entries`` entries of at most ``max_bytes`` bytes in all remain; return how many were removed.

    Never raises for the file system: another process may be pruning (or writing) the same directory at the
    same time, so an entry gone between the listing and its ``stat`` or ``unlink`` is simply gone; if an entry
    cannot be removed (read-only file system, permissions), none can, and the prune stops.
    """
    entries: list[tuple[int, str, int]] = []      # (last use in ns, name, size)
    stale_before = None
    uid = os.geteuid()
    try:
        with os.scandir(where) as listing:
            for entry in listing:
                name = entry.name
                is_tmp = name.startswith(".tmp-")
                if not is_tmp and (name.startswith(".") or not name.endswith(".marshal")):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue                        # vanished: another process pruned it
                if not stat.S_ISREG(st.st_mode) or st.st_uid != uid:
                    continue                        # not an entry of ours: never removed
                if is_tmp:
                    if stale_before is None:
                        stale_before = (lazy.module("time").time() - STALE_TMP_SECONDS) * 1e9
                    if st.st_mtime_ns < stale_before:
                        _remove(entry.path)
                    continue
                entries.append((max(st.st_atime_ns, st.st_mtime_ns), name, st.st_size))
    except OSError:
        return 0                                    # no directory, or it cannot be listed: nothing to bound
    count = len(entries)
    total = sum(size for _, _, size in entries)
    if count <= max_entries and total <= max_bytes:
        return 0
    entries.sort()                                  # oldest use first (ties: by name, the same in every process)
    removed = 0
    for _, name, size in entries:
        if count <= max_entries and total <= max_bytes:
            break
        if not _remove(os.path.join(where, name)):
            break
        count -= 1
        total -= size
        removed += 1
    return removed


def _remove(path: str) -> bool:
    """Unlink ``path``; ``True`` if it is gone now (by us or by another process)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


__all__ = ["CACHE_FORMAT", "MAX_BYTES", "MAX_ENTRIES", "cache_dir", "cached_parse", "is_plain", "open_entry", "prune",
           "read_entry", "write_entry", "write_entry_bytes", "yaml_id"]
