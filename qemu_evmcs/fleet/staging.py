"""The host rows of one ``fleet import``, staged on disk until the import's one transaction writes them.

Why: an import reads every file before it writes anything (a bad profile anywhere leaves the inventory as it
was), so every host row must be kept somewhere in between. Kept in Python lists, a 1 GB fleet file (a million
hosts) cost ~300 bytes of RSS per host; and the loader's table of host names for duplicate detection as much
again. Here they go, a chunk at a time, into a private temporary SQLite database (``sqlite3.connect("")``: an
on-disk file SQLite deletes on close, with a page cache of its own of about 2 MiB), whose primary key refuses a
duplicate host name. Memory is then bounded by the number of distinct profiles (what the loader keeps), not by
the number of hosts; the disk holds about 150 bytes per host (and its file's path) until the import ends.

The staging database is a separate connection, not a TEMP table of the inventory's: writing it never takes a
lock on the inventory, so parsing a large file does not hold other clients off.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from qemu_evmcs.core import lazy
from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.inputfile import open_regular

if TYPE_CHECKING:
    import sqlite3
else:   # imported by `fleet import` when it stages rows, not by every command that reads a fleet (core/lazy.py)
    sqlite3 = lazy.proxy("sqlite3")

#: One row of ``hosts``: (name, fingerprint, file, doc, pool).
HostRow = tuple[str, str, str, int, "str | None"]


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


__all__ = ["HostRow", "StagedHosts", "name_line"]
