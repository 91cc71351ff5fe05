"""The fleet inventory (``fleet import|query|stats``): one SQLite file (stdlib ``sqlite3``).

It stores files (path, mtime, size, SHA-256, pool), hosts (name, fingerprint, file, pool) and each distinct
profile once. Re-import is incremental and runs in ONE transaction: a failure anywhere leaves the database
exactly as it was. Documents are read with the fast loader (:class:`~qemu_evmcs.fleet.loader.FleetLoader`) in
streaming mode, their host rows staged on disk until that transaction (:mod:`~qemu_evmcs.fleet.staging`: memory
bounded by the distinct profiles, not the file); every connection carries SQLite's length limit
(:data:`MAX_VALUE_BYTES`), so a hostile huge value is refused before SQLite reads it;
a stored profile is re-validated, and its fingerprint recomputed, whenever it is read back.
"""

from __future__ import annotations

import contextlib
import functools
import errno
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core.errors import InputError, KvmError
from qemu_evmcs.core.inputfile import describe_mode, is_database, open_regular
from qemu_evmcs.core.hostgroup import Fleet
from qemu_evmcs.core.kernel import era_table
from qemu_evmcs.core.msrval import feature_set
from qemu_evmcs.core.profile import MAX_PROFILE_BYTES, HostProfile, control_character, profile_from_mapping
from qemu_evmcs.core.registry import registry
from qemu_evmcs.core.profilewalk import subdir_hint, walk_profile_files
from qemu_evmcs.fleet.loader import CHUNK_BYTES, FleetLoader
from qemu_evmcs.core.views import visible_features
from qemu_evmcs.qemu.hostguest import host_model_guest_msrs
from qemu_evmcs.fleet.staging import HostRow, StagedHosts
from qemu_evmcs.output.progress import Progress
from qemu_evmcs.core import lazy, stale

if TYPE_CHECKING:
    from typing import Any, ParamSpec, Self, TypeVar
    import hashlib
    import json
    import shutil
    import sqlite3

    PathLike = str | os.PathLike[str]
    _P = ParamSpec("_P")
    _R = TypeVar("_R")
else:   # only an inventory (.db) is opened with it; YAML fleets never need it (core/lazy.py)
    sqlite3 = lazy.proxy("sqlite3")
    shutil = lazy.proxy("shutil")   # only to remove a failed build's directory
    hashlib = lazy.proxy("hashlib")  # only to fingerprint a file being imported
    json = lazy.proxy("json")   # only for profiles stored in or read from a database

#: How long a client waits for another one's lock before saying "busy" (``QEMU_EVMCS_DB_TIMEOUT`` overrides).
BUSY_TIMEOUT_S = 30.0
#: Longest text read back from a name, pool, path or fingerprint column; a longer value is damage, not data.
#: The private build directory of a new database (see :func:`import_into`).
NEW_DB_PREFIX = ".qemu-evmcs-newdb-"
MAX_TEXT_CHARS = 4096
#: Longest stored profile (JSON); a profile file is at most 4 MiB of YAML, its JSON is smaller.
MAX_DATA_CHARS = MAX_PROFILE_BYTES
#: SQLite's own length limit on this connection (``SQLITE_LIMIT_LENGTH``): the longest value it will bring into
#: memory, and the longest row it will write. A longer stored value (a 300 MB host name written by hand) fails
#: with SQLITE_TOOBIG the moment a statement reaches it -- before SQLite reads its pages -- so no check, not even
#: ``length(name)``, materialises it: memory stays flat. Twice the largest legitimate value (a profile's JSON).
MAX_VALUE_BYTES = 2 * MAX_DATA_CHARS


def busy_timeout() -> float:
    """:data:`BUSY_TIMEOUT_S`, or ``$QEMU_EVMCS_DB_TIMEOUT`` seconds when that is a number."""
    try:
        return max(0.0, float(os.environ.get("QEMU_EVMCS_DB_TIMEOUT", BUSY_TIMEOUT_S)))
    except ValueError:
        return BUSY_TIMEOUT_S


def database_error(err: sqlite3.Error, path: str) -> InputError:
    """The one translation of an SQLite failure into an ``error:`` line naming the database (exit 2).

    SQLite's result code decides: another client's lock (after waiting :func:`busy_timeout`) is "busy",
    never "not a fleet database"; a full disk and a read-only file system say so and that nothing changed
    (every write is one transaction); damage says "damaged". The raw message never carries stored text
    (a row's value could be 300 MB or contain escape sequences).
    """
    name = getattr(err, "sqlite_errorname", "") or ""
    text = str(err)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return InputError(f"database is busy: another client holds its lock (waited {busy_timeout():g} s; "
                          "retry later)", file=path)
    if name == "SQLITE_FULL" or "disk is full" in text:
        return InputError("cannot write: no space left on the device (the database is unchanged)", file=path)
    if name.startswith("SQLITE_READONLY") or "readonly" in text:
        return InputError("cannot write: read-only database or file system (the database is unchanged)",
                          file=path)
    if name.startswith("SQLITE_IOERR"):
        return InputError(f"I/O error ({name}; the database is unchanged)", file=path)
    if name.startswith("SQLITE_CANTOPEN"):
        return InputError("cannot open the database (missing or unwritable directory)", file=path)
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return InputError(f"damaged or not a fleet database ({name})", file=path)
    if "decode" in text:
        return InputError("damaged fleet database: a text value is not UTF-8", file=path)
    if name == "SQLITE_TOOBIG":
        return InputError(f"damaged fleet database: a stored value is longer than {MAX_VALUE_BYTES} bytes "
                          "(refused without reading it)", file=path)
    return InputError(f"damaged or not a fleet database ({name or type(err).__name__}: {text[:200]})", file=path)


def _sqlite_boundary(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorate a :class:`FleetDb` method: any ``sqlite3.Error`` leaves it as :func:`database_error`."""
    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except sqlite3.Error as err:
            raise database_error(err, getattr(args[0], "path", "?")) from None
    return wrapper


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; on any failure roll back if a transaction is still open.

    SQLite itself rolls back on some errors (a full disk during COMMIT); a second ROLLBACK then failed with
    "cannot rollback - no transaction is active" and hid the real error. The original exception is the one
    raised; KeyboardInterrupt and cancellation included, never swallowed.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _stored_text(value: object, what: str, path: str) -> str:
    """A text value read back from the inventory, checked: type, length, no control characters."""
    if not isinstance(value, str):
        raise InputError(f"damaged fleet database: {what} is {type(value).__name__}, not text", file=path)
    if len(value) > MAX_TEXT_CHARS:
        raise InputError(f"damaged fleet database: {what} is {len(value)} characters long (at most "
                         f"{MAX_TEXT_CHARS})", file=path)
    bad = control_character(value)
    if bad is not None:
        raise InputError(f"damaged fleet database: {what} contains the control character U+{ord(bad):04X}",
                         file=path)
    return value


def _stored_opt(value: object, what: str, path: str) -> str | None:
    """:func:`_stored_text`, or ``None`` for SQL NULL."""
    return None if value is None else _stored_text(value, what, path)


def _file_sha256(path: str) -> str:
    """SHA-256 of a regular file, read in chunks (a 1 GB fleet file must not be held in memory)."""
    digest = hashlib.sha256()
    with open_regular(path) as fh:
        try:
            for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
                digest.update(block)
        except OSError as err:
            raise InputError(err.strerror or str(err), file=path) from None
    return digest.hexdigest()



def host_features(profile: HostProfile) -> frozenset[str]:
    """Features KVM reports on the system fd (what QEMU and libvirt see): none with nested=0 or on AMD."""
    if not profile.is_intel or not profile.nested:
        return frozenset()
    return feature_set(profile.msrs)


def guest_features(profile: HostProfile, *, evmcs: bool = True, pv_perf_global_ctrl: bool = False) -> frozenset[str]:
    """Features an L1 guest reads (``-cpu host``); empty when eVMCS cannot be enabled on the host.

    The one rule of "visible" (:func:`qemu_evmcs.core.views.visible_features`: set in every MSR of its word, so
    5.15's forgotten TRUE_PINBASED does not count) over what a ``-cpu host`` guest reads
    (:func:`qemu_evmcs.qemu.hostguest.host_model_guest_msrs`: only the features QEMU can give): the set
    ``explain`` counts visible."""
    try:
        return visible_features(host_model_guest_msrs(profile, evmcs=evmcs, pv_perf_global_ctrl=pv_perf_global_ctrl))
    except KvmError:
        return frozenset()


SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE files (
    path     TEXT PRIMARY KEY,
    root     TEXT NOT NULL,
    mtime_ns INTEGER NOT NULL,
    size     INTEGER NOT NULL,
    sha256   TEXT NOT NULL,
    pool     TEXT
);
CREATE TABLE profiles (
    fingerprint TEXT PRIMARY KEY,
    vendor      TEXT NOT NULL,
    kernel      TEXT NOT NULL,
    era         TEXT NOT NULL,
    model_name  TEXT,
    nested      INTEGER NOT NULL,
    data        TEXT NOT NULL,
    source      TEXT
);
CREATE TABLE hosts (
    name        TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL REFERENCES profiles(fingerprint),
    file        TEXT NOT NULL REFERENCES files(path),
    doc         INTEGER NOT NULL,
    pool        TEXT
);
CREATE INDEX hosts_fingerprint ON hosts(fingerprint);
CREATE INDEX hosts_file ON hosts(file);
CREATE INDEX hosts_pool ON hosts(pool);
CREATE INDEX files_root ON files(root);
"""


@dataclass
class ImportResult:
    """What one ``fleet import`` changed (files counted)."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    hosts: int = 0
    distinct: int = 0
    parsed_documents: int = 0

    def as_dict(self) -> dict[str, int]:
        """Plain data for ``--json``; the distinct-profile count is ``distinct_profiles`` as in every command."""
        out = dict(self.__dict__)
        out["distinct_profiles"] = out.pop("distinct")
        out["host_count"] = out.pop("hosts")
        return out


class FleetDb:
    """A fleet inventory in one SQLite file.

    :param path: the database file.
    :param create: create it (with the schema) when it does not exist; otherwise a missing file is an
        :class:`InputError`. (``fleet import`` creates a new inventory through :func:`import_into`, which
        builds it aside and links it into place, so a refused first import leaves no file.)
    :param shown_as: the name messages give the database (the path the user named, while
        :func:`import_into` builds it in its private directory); default ``path``.
    """

    def __init__(self, path: PathLike, *, create: bool = False, shown_as: PathLike | None = None) -> None:
        self.path = os.fspath(shown_as if shown_as is not None else path)
        file = os.fspath(path)
        if not file:
            raise InputError("empty database path", key="--db")
        try:
            st: os.stat_result | None = os.stat(file)
        except FileNotFoundError:
            st = None
        except OSError as err:
            raise InputError(err.strerror or str(err), file=self.path) from None
        if st is None and not create:
            raise InputError("no such fleet database (create it with `qemu-evmcs fleet import`)", file=self.path)
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise InputError(f"is {describe_mode(st.st_mode)}, not a fleet database file", file=self.path)
        if st is not None and st.st_size > 0 and not is_database(file):
            raise InputError("not an SQLite fleet database", file=self.path)
        try:
            self.conn = sqlite3.connect(file, isolation_level=None, timeout=busy_timeout())
        except sqlite3.Error as err:
            raise database_error(err, self.path) from None
        try:
            self.conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
            self.conn.execute("PRAGMA foreign_keys = ON")
            self._check_schema(create)
        except BaseException as err:
            self.conn.close()
            if isinstance(err, sqlite3.Error):
                raise database_error(err, self.path) from None
            raise

    def _tables(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _check_schema(self, create: bool) -> None:
        """Check the schema, creating it in a new database.

        Race-free: two first imports into the same new file both see no tables; the second one's
        ``BEGIN IMMEDIATE`` waits for the first one's transaction and then finds the schema made, instead
        of failing with "table schema_version already exists".
        """
        if not self._tables():
            if not create:
                raise InputError("empty database, not a fleet inventory", file=self.path)
            with _transaction(self.conn):
                if not self._tables():
                    for stmt in _SCHEMA.strip().split(";"):
                        if stmt.strip():
                            self.conn.execute(stmt)
                    self.conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        tables = self._tables()
        if "schema_version" not in tables:
            raise InputError("not a fleet database (no schema_version table)", file=self.path)
        row = self.conn.execute("SELECT version FROM schema_version").fetchone()
        if row is None or row[0] != SCHEMA_VERSION:
            raise InputError(f"fleet database schema version {row[0] if row else None} is not supported "
                             f"(this qemu-evmcs writes version {SCHEMA_VERSION}); re-import into a new file",
                             file=self.path)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ import
    @_sqlite_boundary
    def import_paths(self, paths: Sequence[PathLike], *, pool: str | None = None,
                     progress: bool | None = None) -> ImportResult:
        """Import (or re-import) profile files and directories, incrementally, in ONE transaction.

        A file whose (mtime, size) or, failing that, SHA-256 is unchanged is skipped; a changed file's hosts
        are replaced; files gone from an imported directory (or a missing imported file) are deleted
        with their hosts. ``pool`` sets the pool of every host of these paths; without it, a re-imported
        file keeps its pool. Any error rolls everything back and is raised (naming the file).
        """
        for p in paths:
            if not os.fspath(p):
                raise InputError("empty path (it would import the current directory)", key="PATH")
        if pool is not None and control_character(pool) is not None:
            raise InputError("contains a control character", key="--pool")
        if pool is not None and len(pool) > MAX_TEXT_CHARS:
            raise InputError(f"is {len(pool)} characters long (at most {MAX_TEXT_CHARS})", key="--pool")
        with StagedHosts(max_name_chars=MAX_TEXT_CHARS) as staged:
            return self._import(paths, pool, progress, staged)

    def _import(self, paths: Sequence[PathLike], pool: str | None, progress: bool | None,
                staged: StagedHosts) -> ImportResult:
        """:meth:`import_paths` with host rows, the list of files and each file's bookkeeping staged on disk
        (memory bounded by the distinct profiles, not by the hosts or the files: :mod:`~qemu_evmcs.fleet.staging`)."""
        res = ImportResult()
        loader = FleetLoader(sink=staged.add)
        conn = self.conn
        # Phase 1: list, scan and parse (nothing written yet).
        roots = [os.path.abspath(os.fspath(p)) for p in paths]
        listed_roots: set[str] = set()
        total = 0
        for root in roots:
            if os.path.isdir(root):
                count, size = staged.list_files(root, walk_profile_files(root))
                if not count and not self._imported_root(root):
                    # Never imported and nothing to import: say so rather than "0 hosts" and exit 0.
                    raise InputError("no host profiles found" + subdir_hint([os.fspath(root)]),
                                     file=os.fspath(root))
            elif os.path.exists(root):
                count, size = staged.list_files(root, [(b"", root)])
            elif self._imported_root(root):
                size = 0                      # an imported file that was deleted: remove its hosts (below)
            else:
                raise InputError("no such file or directory", file=os.fspath(root))
            listed_roots.add(root)
            total += size
        # Progress in bytes, the unit that moves (one 100 MB file is one file, but a hundred million bytes).
        still = 0                             # listed files the inventory has under one of these arguments
        with Progress(total, "importing", enabled=progress, unit="B") as bar:
            loader.progress = bar if bar.enabled else None
            for page in staged.listed():   # sorted, each path once (under the first argument listing it)
                # One query per page (a query per file was 10-20 us of locking each: 1.5 s for 100,000 files).
                known = {r[0]: r[1:] for r in conn.execute(
                    "SELECT path, mtime_ns, size, sha256, pool, root FROM files WHERE path IN "
                    f"({', '.join('?' * len(page))})", [f for _, f in page])}
                for root, f in page:
                    try:
                        st = os.stat(f)
                    except OSError as err:
                        raise InputError(err.strerror or str(err), file=f) from None
                    old = known.get(f)
                    new_pool = pool if pool is not None else (old[3] if old else None)
                    if old and old[4] in listed_roots:
                        still += 1
                    if old and old[0] == st.st_mtime_ns and old[1] == st.st_size:
                        bar.update(st.st_size)
                        res.unchanged += 1
                        if new_pool != old[3] or root != old[4]:
                            staged.touch((f, root, st.st_mtime_ns, st.st_size, old[2], new_pool))
                        continue
                    sha = _file_sha256(f)  # streamed: memory does not grow with the file
                    if old and old[2] == sha:
                        bar.update(st.st_size)
                        res.unchanged += 1
                        staged.touch((f, root, st.st_mtime_ns, st.st_size, sha, new_pool))
                        continue
                    staged.start_file(f, new_pool)
                    loader.add_file(f)
                    if not staged.count:
                        raise InputError("no host profile in file", file=f)
                    staged.replace((f, root, st.st_mtime_ns, st.st_size, sha, new_pool))
                    if old:
                        res.updated += 1
                    else:
                        res.added += 1
        # Imported files of these arguments that are no longer listed are deleted with their hosts (looked for
        # only when the inventory has more files under them than were listed: a re-import deletes nothing).
        if sum(conn.execute("SELECT COUNT(*) FROM files WHERE root = ?", (root,)).fetchone()[0]
               for root in listed_roots) > still:
            for root in listed_roots:
                for (path,) in conn.execute("SELECT path FROM files WHERE root = ?", (root,)):
                    if not staged.is_listed(path):
                        staged.gone(path)
                        res.removed += 1
        res.parsed_documents = loader.parsed
        # Phase 2: write everything in one transaction (every staged list streamed from disk).
        with _transaction(conn):
            for path, *_ in staged.pending("gone"):
                conn.execute("DELETE FROM hosts WHERE file = ?", (path,))
                conn.execute("DELETE FROM files WHERE path = ?", (path,))
            for f, *_ in staged.pending("replace"):
                conn.execute("DELETE FROM hosts WHERE file = ?", (f,))
            conn.executemany("UPDATE files SET mtime_ns = ?, size = ?, sha256 = ?, pool = ?, root = ? WHERE path = ?",
                             ((mtime, size, sha, p, root, f)
                              for f, root, mtime, size, sha, p in staged.pending("touch")))
            conn.executemany("UPDATE hosts SET pool = ? WHERE file = ?",
                             ((p, f) for f, _, _, _, _, p in staged.pending("touch")))
            for fp, prof in loader.fleet.distinct.items():
                self._put_profile(fp, prof)
            conn.executemany("INSERT OR REPLACE INTO files (path, root, mtime_ns, size, sha256, pool) "
                             "VALUES (?, ?, ?, ?, ?, ?)", staged.pending("replace"))
            last: list[HostRow] = []

            def rows() -> Iterator[HostRow]:
                for row in staged.rows():      # streamed from the staging file, one row at a time
                    last[:] = [row]
                    yield row
            try:
                conn.executemany("INSERT INTO hosts (name, fingerprint, file, doc, pool) VALUES (?, ?, ?, ?, ?)",
                                 rows())
            except sqlite3.IntegrityError:
                # The row being inserted when SQLite refused it: a name another (unchanged) file already has.
                name, fp, f = last[0][:3] if last else ("", "", "")
                raise self._duplicate(f, [(name, fp)]) from None
            conn.execute("DELETE FROM profiles WHERE fingerprint NOT IN (SELECT DISTINCT fingerprint FROM hosts)")
            res.hosts = conn.execute("SELECT COUNT(*) FROM hosts").fetchone()[0]
            res.distinct = conn.execute("SELECT COUNT(*) FROM profiles").fetchone()[0]
        return res

    def _imported_root(self, root: str) -> bool:
        """Was anything imported from the argument ``root`` before?"""
        return self.conn.execute("SELECT 1 FROM files WHERE root = ? LIMIT 1", (root,)).fetchone() is not None

    def _duplicate(self, f: str, hosts: list[tuple[str, str]]) -> InputError:
        for name, _ in hosts:
            row = self.conn.execute("SELECT file FROM hosts WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] != f:
                return InputError(f"duplicate host name {name!r} (already imported from {row[0]})", file=f, key="name")
        return InputError("duplicate host name in file", file=f, key="name")

    def _put_profile(self, fp: str, prof: HostProfile) -> None:
        data = json.dumps(prof.to_mapping(), sort_keys=True)
        if len(data) > MAX_DATA_CHARS:
            # Every reader would refuse it (and SQLite's length limit could stop the write with a misleading
            # "damaged"): say at import what is wrong. (JSON escapes non-ASCII text, so it can outgrow its YAML.)
            raise InputError(f"profile {prof.name!r} is {len(data)} bytes as stored JSON (at most {MAX_DATA_CHARS})",
                             file=prof.source)
        self.conn.execute(
            "INSERT OR IGNORE INTO profiles (fingerprint, vendor, kernel, era, model_name, nested, data, source) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (fp, prof.vendor, prof.kernel, prof.era_label, prof.model_name, int(prof.nested), data, prof.source))

    # ------------------------------------------------------------------ reading
    def _check_rows(self) -> None:
        """Refuse damaged rows before reading any: wrong types, NULL names, values far too long.

        One scan in SQL (``typeof``/``length``), so a hostile long value is never fetched into Python; and
        ``length()`` of a text value, which makes SQLite load all of it, loads at most :data:`MAX_VALUE_BYTES`:
        past that the connection's length limit stops SQLite before it reads (SQLITE_TOOBIG, "damaged"). The
        profile data column is measured by :meth:`_stored_data` instead (a blob handle knows the size without
        reading, so its own, smaller limit is said with the size).
        """
        t = MAX_TEXT_CHARS
        bad = self.conn.execute(
            "SELECT rowid FROM hosts WHERE typeof(name) != 'text' OR length(name) > ? "
            "OR typeof(fingerprint) != 'text' OR length(fingerprint) > ? "
            "OR (pool IS NOT NULL AND (typeof(pool) != 'text' OR length(pool) > ?)) "
            "OR (file IS NOT NULL AND (typeof(file) != 'text' OR length(file) > ?)) LIMIT 1", (t, t, t, t)).fetchone()
        if bad is not None:
            raise InputError(f"damaged fleet database: hosts row {bad[0]} has a missing, non-text or over-long "
                             f"name, fingerprint, pool or file (text of at most {t} characters)", file=self.path)
        bad = self.conn.execute(
            "SELECT rowid FROM profiles WHERE typeof(fingerprint) != 'text' OR length(fingerprint) > ? "
            "OR typeof(data) != 'text' "
            "OR (source IS NOT NULL AND (typeof(source) != 'text' OR length(source) > ?)) "
            "OR typeof(vendor) NOT IN ('text', 'null') OR length(vendor) > ? "
            "OR typeof(era) NOT IN ('text', 'null') OR length(era) > ? "
            "OR typeof(model_name) NOT IN ('text', 'null') OR length(model_name) > ? LIMIT 1",
            (t, t, t, t, t)).fetchone()
        if bad is not None:
            raise InputError(f"damaged fleet database: profiles row {bad[0]} has a missing, non-text or over-long "
                             f"value (text of at most {t} characters)", file=self.path)

    def _stored_data(self, rowid: int, fp: str) -> str:
        """Profile ``rowid``'s JSON text, read through a blob handle: its size is known before reading, so a
        300 MB hostile value is refused without being loaded (memory stays bounded by the number of
        distinct profiles times :data:`MAX_DATA_CHARS`)."""
        with self.conn.blobopen("profiles", "data", rowid, readonly=True) as blob:
            size = len(blob)
            if size > MAX_DATA_CHARS:
                raise InputError(f"damaged fleet database: profile {fp} is {size} bytes (at most {MAX_DATA_CHARS})",
                                 file=self.path)
            raw = blob.read()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"damaged fleet database: profile {fp} is not UTF-8 text", file=self.path) from None

    @_sqlite_boundary
    def profiles(self) -> dict[str, HostProfile]:
        """Stored fingerprint -> representative profile (re-validated: JSON, profile rules, text checks)."""
        self._check_rows()
        out: dict[str, HostProfile] = {}
        rows = self.conn.execute("SELECT rowid, fingerprint, source FROM profiles ORDER BY fingerprint").fetchall()
        for rowid, fp, source in rows:
            fp = _stored_text(fp, "a profile fingerprint", self.path)
            data = self._stored_data(rowid, fp)
            try:
                mapping = json.loads(data)
            except (ValueError, RecursionError) as err:  # not JSON, a 5,000-digit integer, deep nesting
                reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)[:200]
                raise InputError(f"damaged fleet database: profile {fp} is not valid JSON ({reason})",
                                 file=self.path) from None
            try:
                src = _stored_opt(source, f"profile {fp}'s source", self.path)
            except InputError:
                src = None
            try:
                out[fp] = profile_from_mapping(mapping, file=src or self.path)
            except RecursionError:
                raise InputError(f"damaged fleet database: profile {fp} is nested too deeply",
                                 file=self.path) from None
        return out

    @_sqlite_boundary
    def load_fleet(self, *, pool: str | None = None) -> Fleet:
        """The inventory as a :class:`Fleet` (optionally one pool only)."""
        stored = self.profiles()
        fleet = Fleet(source=self.path)
        remap: dict[str, str] = {}
        for fp, prof in stored.items():
            # A fingerprint written by another version of qemu-evmcs is recomputed, never trusted.
            real = prof.fingerprint()
            remap[fp] = real
            fleet.distinct.setdefault(real, prof)
        sql = "SELECT name, fingerprint, pool FROM hosts"
        args: tuple[str, ...] = ()
        if pool is not None:
            sql += " WHERE pool = ?"
            args = (pool,)
        for name, fp, hpool in self.conn.execute(sql + " ORDER BY rowid", args):
            name = _stored_text(name, "a host name", self.path)
            real = self._real_fingerprint(remap, name, fp)
            fleet.members.setdefault(real, []).append(name)
            if hpool is not None:
                fleet.pools[name] = _stored_text(hpool, f"host {name}'s pool", self.path)
        fleet.distinct = {fp: p for fp, p in fleet.distinct.items() if fp in fleet.members}
        return fleet

    def _real_fingerprint(self, remap: dict[str, str], name: str, fp: object) -> str:
        """The recomputed fingerprint of host ``name``'s stored one; a dangling reference is damage."""
        real = remap.get(fp) if isinstance(fp, str) else None
        if real is None:
            raise InputError(f"damaged fleet database: host {name} refers to a profile that is not stored",
                             file=self.path)
        return real

    @_sqlite_boundary
    def query(self, *, era: str | None = None, feature: str | None = None, view: str = "guest",
              pool: str | None = None) -> list[dict[str, Any]]:
        """Hosts matching every given filter: ``[{name, pool, fingerprint, kernel_series, era, vendor, file}]``
        (``kernel_series``: major.minor, the part of the kernel a profile's fingerprint keeps; ``kernel`` means a
        full release in every command's JSON, and the inventory does not keep each host's).

        :param era: an era id (``"6.1-6.2"``); :class:`InputError` if unknown.
        :param feature: a VMX feature by any registry name; :class:`InputError` if unknown.
        :param view: ``host`` (what KVM reports on the system fd) or ``guest`` (what an eVMCS L1 guest
            reads, PV PERF_GLOBAL_CTRL bit clear).
        """
        if era is not None:
            era_table().by_id(era)
        canon: str | None = None
        if feature is not None:
            canon = registry().feature(feature).name
        if view not in ("host", "guest"):
            raise InputError(f"unknown view {view!r} (host or guest)", key="--view")
        profiles = self.profiles()
        keep: dict[str, HostProfile] = {}
        for fp, prof in profiles.items():
            if era is not None and era not in prof.identity.era_ids():
                continue
            if canon is not None:
                # a kernel build of unknown era matches only if the feature is there whichever era it is in
                if not all(canon in (host_features(c) if view == "host" else guest_features(c))
                           for c in prof.candidate_profiles()):
                    continue
            keep[fp] = prof
        sql = "SELECT name, fingerprint, pool, file FROM hosts"
        args: tuple[str, ...] = ()
        if pool is not None:
            sql += " WHERE pool = ?"
            args = (pool,)
        out: list[dict[str, Any]] = []
        remap = {fp: fp for fp in profiles}
        for name, fp, hpool, f in self.conn.execute(sql + " ORDER BY name", args):
            name = _stored_text(name, "a host name", self.path)
            self._real_fingerprint(remap, name, fp)
            hit = keep.get(fp)
            if hit is None:
                continue
            hpool = _stored_opt(hpool, f"host {name}'s pool", self.path)
            f = _stored_opt(f, f"host {name}'s file", self.path)
            out.append({"name": name, "pool": hpool, "fingerprint": fp, "vendor": hit.vendor,
                        "kernel_series": f"{hit.version.major}.{hit.version.minor}", "era": hit.era_label,
                        "file": f})
        return out

    @_sqlite_boundary
    def stats(self) -> dict[str, Any]:
        """Counts: hosts, files, distinct profiles, by pool, era, vendor and CPU.

        The inventory is read and re-validated first (profiles once per distinct profile, then every host
        row), so a damaged row fails here as in every other reader instead of being counted.
        """
        self.load_fleet()
        c = self.conn
        path = self.path
        by_era: dict[str, int] = {}
        by_vendor: dict[str, int] = {}
        by_cpu: dict[str, int] = {}
        nested_off = 0
        for era, vendor, model, nested, n in c.execute(
                "SELECT p.era, p.vendor, p.model_name, p.nested, COUNT(*) FROM hosts h "
                "JOIN profiles p ON p.fingerprint = h.fingerprint GROUP BY p.fingerprint"):
            era = _stored_text(era, "a profile's era", path)
            vendor = _stored_text(vendor, "a profile's vendor", path)
            model = _stored_opt(model, "a profile's CPU model name", path)
            by_era[era] = by_era.get(era, 0) + n
            by_vendor[vendor] = by_vendor.get(vendor, 0) + n
            cpu = model or vendor
            by_cpu[cpu] = by_cpu.get(cpu, 0) + n
            if not nested:
                nested_off += n
        pools = {(_stored_text(p, "a pool name", path) if p is not None else "(none)"): n
                 for p, n in c.execute("SELECT pool, COUNT(*) FROM hosts GROUP BY pool ORDER BY pool")}
        return {
            "database": self.path,
            "schema_version": SCHEMA_VERSION,
            "host_count": c.execute("SELECT COUNT(*) FROM hosts").fetchone()[0],
            "files": c.execute("SELECT COUNT(*) FROM files").fetchone()[0],
            "distinct_profiles": c.execute("SELECT COUNT(*) FROM profiles").fetchone()[0],
            "nested_off_hosts": nested_off,
            "pools": pools,
            "eras": dict(sorted(by_era.items())),
            "vendors": dict(sorted(by_vendor.items())),
            "cpus": dict(sorted(by_cpu.items())),
        }


def import_into(db_path: PathLike, paths: Sequence[PathLike], *, pool: str | None = None,
                progress: bool | None = None) -> ImportResult:
    """``fleet import``: import ``paths`` into the inventory ``db_path``, creating it if it does not exist.

    Why a new inventory is not created in place: SQLite makes the file when it connects, so a first import
    refused while reading (a device, a missing or damaged file, a bad document found half-way through a
    directory) used to leave an empty inventory the user never asked for, which later commands read as
    "0 hosts" rather than "no such fleet database". A new inventory is built in a private directory beside
    it (:func:`qemu_evmcs.core.stale.make_owned_dir`: the next import there sweeps it if this process was
    SIGKILLed) and hard-linked into place only after its one transaction committed. ``link`` never
    replaces a file: if another import created ``db_path`` meanwhile, this import is done again into that
    one (imports are incremental, so both end up there), and readers never see a half-made file.
    """
    target = os.fspath(db_path)
    if not target:
        raise InputError("empty database path", key="--db")

    def into_existing() -> ImportResult:
        with FleetDb(target, create=True) as db:
            return db.import_paths(paths, pool=pool, progress=progress)
    if os.path.lexists(target):
        return into_existing()
    parent = os.path.dirname(os.path.abspath(target))
    stale.sweep(parent, NEW_DB_PREFIX)
    try:
        build = stale.make_owned_dir(parent, NEW_DB_PREFIX)
    except OSError as err:
        raise InputError(f"cannot create the database here: {err.strerror or err}", file=target) from None
    try:
        fresh = os.path.join(build, "new.db")
        with FleetDb(fresh, create=True, shown_as=target) as db:
            res = db.import_paths(paths, pool=pool, progress=progress)
        try:
            os.link(fresh, target)
        except FileExistsError:       # another import created it meanwhile: add ours to theirs
            return into_existing()
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS):
                raise InputError(err.strerror or str(err), file=target) from None
            # A file system without hard links: rename, which could replace a file made this instant.
            if os.path.lexists(target):
                return into_existing()
            try:
                os.rename(fresh, target)
            except OSError as err2:
                raise InputError(err2.strerror or str(err2), file=target) from None
        return res
    finally:
        shutil.rmtree(build, ignore_errors=True)
