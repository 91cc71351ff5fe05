"""The host rows of one ``fleet import``, staged on disk until the import's one transaction writes them.

Why: an import reads every file before it writes anything (a bad profile anywhere leaves the inventory as it
was), so every host row must be kept somewhere in between. Kept in Python lists, a 1 GB fleet file (a million
hosts) cost ~300 bytes of RSS per host; and the loader's table of host names for duplicate detection as much
again. Here they go, a chunk at a time, into a private temporary SQLite database (``sqlite3.connect("")``: an
on-disk file SQLite deletes on close, with a page cache of its own of about 2 MiB), whose primary key refuses a
duplicate host name. Memory is then bounded by the number of distinct profiles (what the loader keeps), not by
the number of hosts; the disk holds about 150 bytes per host (and its file's path) until the import ends.

The same holds for a directory of one file per host (``make-fleet --out DIR/``): the import's list of files and
each file's bookkeeping (kept in Python, ~660 bytes of RSS a file: 95 MB at 100,000 files) wait here too. The
directory is listed as it is read (``os.scandir`` order, :func:`~qemu_evmcs.core.profilewalk.walk_profile_files`)
into a table that SQLite then indexes by (argument, sort key) on disk, so reading it back in that order gives
the sorted order the import always used; a path listed twice (a file inside a directory also given) is kept
once, under the first argument that lists it. The files to replace, to touch (same content, new mtime or
pool) and to delete wait in another table until the inventory's transaction. Paths are stored as text, like
the inventory's: a file name that is not UTF-8 is refused when listed.

The staging database is a separate connection, not a TEMP table of the inventory's: writing it never takes a
lock on the inventory, so parsing a large file does not hold other clients off.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable, Iterator
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core import lazy
from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.inputfile import open_regular

if TYPE_CHECKING:
    import sqlite3
else:   # imported by `fleet import` when it stages rows, not by every command that reads a fleet (core/lazy.py)
    sqlite3 = lazy.proxy("sqlite3")

#: One row of ``hosts``: (name, fingerprint, file, doc, pool).
HostRow = tuple[str, str, str, int, "str | None"]
#: One row of the inventory's ``files``: (path, root, mtime_ns, size, sha256, pool).
FileRow = tuple[str, str, int, int, str, "str | None"]
#: Rows written or read per SQLite call (memory per batch, not per file).
BATCH = 512
# Kinds of pending file rows.
_REPLACE, _TOUCH, _GONE = 0, 1, 2


class StagedHosts:
    """Host rows of one import, in the order they were read; a duplicate name is refused as it arrives.

    ``max_name_chars``: the longest host name the inventory keeps.

    Use :meth:`start_file` before feeding a file's hosts to :meth:`add` (the loader's ``sink``), :meth:`rows`
    to write them, and :meth:`close` (or ``with``) to delete the staging file.
    """

    def __init__(self, *, max_name_chars: int) -> None:
        self._max_name = max_name_chars
        self._conn = sqlite3.connect("", isolation_level=None)
        self._conn.execute("CREATE TABLE staged (name TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, "
                           "file TEXT NOT NULL, doc INTEGER NOT NULL, pool TEXT)")
        # The files' tables in a staging database of their own: sharing one page cache with the hosts' rows
        # made both slower once they outgrew it (100,000 files: 15 s instead of 10 s). ``listed`` is filled
        # without an index (rows arrive in directory order: inserting them into sorted indexes one by one cost
        # 1.5 s for 100,000 files); its indexes are built once, by SQLite's sorter, before it is read.
        self._files = sqlite3.connect("", isolation_level=None)
        self._files.execute("CREATE TABLE listed (root_no INTEGER NOT NULL, sortkey BLOB NOT NULL, path TEXT NOT NULL)")
        self._indexed = False
        self._files.execute("CREATE TABLE pending (kind INTEGER NOT NULL, path TEXT NOT NULL, root TEXT, "
                            "mtime_ns INTEGER, size INTEGER, sha256 TEXT, pool TEXT)")
        self._roots: list[str] = []
        self._pending: list[tuple[int, str, str | None, int | None, int | None, str | None, str | None]] = []
        self._file = ""
        self._pool: str | None = None
        #: Hosts of the current file so far (its next document's index).
        self.count = 0

    def __enter__(self) -> StagedHosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the staging database (SQLite deletes its file)."""
        self._conn.close()
        self._files.close()

    def start_file(self, path: str, pool: str | None) -> None:
        """The hosts :meth:`add` receives next are documents 0, 1, ... of ``path``, in ``pool``."""
        self._file, self._pool, self.count = path, pool, 0

    def add(self, hosts: list[tuple[str, str]]) -> None:
        """Stage ``[(host, fingerprint)]`` (the next documents of the current file).

        :raise InputError: a host name already staged (in this file or another file of this import), or longer
            than ``max_name_chars`` (refused here, at import, rather than by every later reader).
        """
        for name, _ in hosts:
            if len(name) > self._max_name:
                raise InputError(f"host name is {len(name)} characters long (at most {self._max_name})",
                                 file=self._file, key="name", line=name_line(self._file, name, 1))
        rows = [(name, fp, self._file, self.count + i, self._pool) for i, (name, fp) in enumerate(hosts)]
        self.count += len(rows)
        self._conn.execute("BEGIN")
        try:
            self._conn.executemany("INSERT INTO staged VALUES (?, ?, ?, ?, ?)", rows)
        except sqlite3.IntegrityError:
            self._conn.execute("ROLLBACK")
            raise self._duplicate(rows) from None
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _duplicate(self, rows: list[HostRow]) -> InputError:
        """The error for the first row of ``rows`` whose name was staged before (or earlier in ``rows``)."""
        seen: dict[str, str] = {}
        for name, _, path, _, _ in rows:
            other = seen.get(name)
            if other is None:
                row = self._conn.execute("SELECT file FROM staged WHERE name = ?", (name,)).fetchone()
                other = row[0] if row is not None else None
            if other is not None:
                return InputError(f"duplicate host name {name!r} (also in {other})", file=path, key="name",
                                  line=name_line(path, name, 2 if other == path else 1))
            seen[name] = path
        return InputError("duplicate host name", file=self._file, key="name")  # pragma: no cover - defensive

    def rows(self) -> Iterator[HostRow]:
        """Every staged row, in the order staged (streamed from disk)."""
        yield from self._conn.execute("SELECT name, fingerprint, file, doc, pool FROM staged ORDER BY rowid")

    # ------------------------------------------------------------------ the files of the import
    def _insert(self, sql: str, rows: Iterable[tuple[object, ...]]) -> None:
        """``executemany`` in transactions of :data:`BATCH` rows (one transaction per row is slow)."""
        it = iter(rows)
        while batch := list(itertools.islice(it, BATCH)):
            self._files.execute("BEGIN")
            try:
                self._files.executemany(sql, batch)
            except BaseException:
                self._files.execute("ROLLBACK")
                raise
            self._files.execute("COMMIT")

    def list_files(self, root: str, found: Iterable[tuple[bytes, str]]) -> tuple[int, int]:
        """List ``(sort key, path)`` items (streamed) under argument ``root`` (the next argument of the import);
        return how many and their total size in bytes (for the progress bar; an unreadable size counts 0).

        :raise InputError: a path that is not UTF-8 (the inventory keeps paths as text).
        """
        no = len(self._roots)
        self._roots.append(root)
        count = size = 0

        def rows() -> Iterator[tuple[int, bytes, str]]:
            nonlocal count, size
            for key, path in found:
                try:
                    path.encode("utf-8")
                except UnicodeEncodeError:
                    shown = os.fsencode(path).decode("utf-8", "backslashreplace")   # printable on any stderr
                    raise InputError("the file name is not UTF-8 (the inventory keeps paths as text): rename it",
                                     file=shown) from None
                try:
                    size += os.stat(path).st_size
                except OSError:
                    pass
                count += 1
                yield no, key, path
        if self._indexed:
            raise RuntimeError("list_files after listed(): every argument must be listed first")
        self._insert("INSERT INTO listed (root_no, sortkey, path) VALUES (?, ?, ?)", rows())
        return count, size

    def _index(self) -> None:
        """Once every argument is listed: sort ``listed`` (two indexes) and keep each path once, under the first
        argument that listed it (rowids grow in listing order)."""
        if self._indexed:
            return
        self._indexed = True
        self._files.execute("CREATE INDEX listed_path ON listed (path)")
        if len(self._roots) > 1:
            self._files.execute("DELETE FROM listed WHERE rowid NOT IN (SELECT MIN(rowid) FROM listed GROUP BY path)")
        self._files.execute("CREATE INDEX listed_order ON listed (root_no, sortkey)")

    def listed(self) -> Iterator[list[tuple[str, str]]]:
        """``(root, path)`` of every listed path once, argument by argument, each argument's paths sorted, in
        pages of at most :data:`BATCH` (so that the caller can look a page up in one query). Call it (and
        :meth:`is_listed`) only after every :meth:`list_files`.

        Read a page at a time (no statement stays open while the caller stages hosts on this connection)."""
        self._index()
        after: tuple[int, bytes] = (-1, b"")
        while page := self._files.execute(
                "SELECT root_no, sortkey, path FROM listed WHERE (root_no, sortkey) > (?, ?) "
                "ORDER BY root_no, sortkey LIMIT ?", (*after, BATCH)).fetchall():
            yield [(self._roots[no], path) for no, _, path in page]
            after = (page[-1][0], page[-1][1])

    def is_listed(self, path: str) -> bool:
        """Was ``path`` listed under any argument?"""
        self._index()
        return self._files.execute("SELECT 1 FROM listed WHERE path = ?", (path,)).fetchone() is not None

    def _add_pending(self, kind: int, path: str, root: str | None = None, mtime_ns: int | None = None,
                     size: int | None = None, sha256: str | None = None, pool: str | None = None) -> None:
        self._pending.append((kind, path, root, mtime_ns, size, sha256, pool))
        if len(self._pending) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        rows, self._pending = self._pending, []
        self._insert("INSERT INTO pending VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def replace(self, row: FileRow) -> None:
        """The file ``row`` was read: its hosts (staged) replace the inventory's, its ``files`` row is written."""
        self._add_pending(_REPLACE, *row)

    def touch(self, row: FileRow) -> None:
        """The file ``row`` is unchanged in content: only its ``files`` row and its hosts' pool are updated."""
        self._add_pending(_TOUCH, *row)

    def gone(self, path: str) -> None:
        """The imported file ``path`` is no longer there: it and its hosts are deleted."""
        self._add_pending(_GONE, path)

    def pending(self, kind: str) -> Iterator[FileRow]:
        """The file rows given to :meth:`replace`, :meth:`touch` or :meth:`gone` (``kind``: that method's name),
        in that order, streamed from disk."""
        if self._pending:
            self._flush()
        code = {"replace": _REPLACE, "touch": _TOUCH, "gone": _GONE}[kind]
        yield from self._files.execute("SELECT path, root, mtime_ns, size, sha256, pool FROM pending "
                                      "WHERE kind = ? ORDER BY rowid", (code,))


def name_line(path: str, name: str, nth: int) -> int | None:
    """1-based line of the ``nth`` top-level ``name:`` entry of ``path`` naming ``name`` (plain or quoted), for
    an error message; ``None`` when not found. Streamed line by line: only called when an import fails."""
    want = re.compile(rb"name[ \t]*:[ \t]*(['\"]?)" + re.escape(name.encode("utf-8")) + rb"\1[ \t]*(#.*)?\r?\n?")
    found = 0
    try:
        with open_regular(path) as fh:
            for number, line in enumerate(fh, 1):
                if want.fullmatch(line) is not None:
                    found += 1
                    if found == nth:
                        return number
    except (InputError, OSError):
        return None
    return None


__all__ = ["FileRow", "HostRow", "StagedHosts", "name_line"]
