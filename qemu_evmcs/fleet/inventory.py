"""The fleet inventory (``fleet import|query|stats``): one SQLite file (stdlib ``sqlite3``).

It stores files (path, mtime, size, SHA-256, pool), hosts (name, fingerprint, file, pool) and each distinct
profile once. Re-import is incremental and runs in ONE transaction: a failure anywhere leaves the database
exactly as it was. Documents are read with the fast loader (:class:`~qemu_evmcs.fleet.loader.FleetLoader`);
a stored profile is re-validated, and its fingerprint recomputed, whenever it is read back.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self, Union

from qemu_evmcs.core.errors import InputError, KvmError
from qemu_evmcs.core.inputfile import open_regular
from qemu_evmcs.core.hostgroup import Fleet
from qemu_evmcs.core.kernel import era_table
from qemu_evmcs.core.msrval import feature_set
from qemu_evmcs.core.profile import HostProfile, profile_from_mapping
from qemu_evmcs.core.registry import registry
from qemu_evmcs.fleet.loader import CHUNK_BYTES, FleetLoader, profile_files, subdir_hint
from qemu_evmcs.kvm.simkvm import guest_view
from qemu_evmcs.output.progress import Progress

PathLike = Union[str, "os.PathLike[str]"]


def is_database(path: PathLike) -> bool:
    """Is ``path`` an existing SQLite file (by its 16-byte header)?"""
    try:
        with open_regular(os.fspath(path)) as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except (InputError, OSError):
        return False


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
    """Features an L1 guest reads (``-cpu host``); empty when eVMCS cannot be enabled on the host."""
    try:
        return feature_set(guest_view(profile, evmcs=evmcs, pv_perf_global_ctrl=pv_perf_global_ctrl))
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
        """Plain data for ``--json``."""
        return dict(self.__dict__)


class FleetDb:
    """A fleet inventory in one SQLite file.

    :param path: the database file.
    :param create: create it (with the schema) when it does not exist; otherwise a missing file is an
        :class:`InputError`.
    """

    def __init__(self, path: PathLike, *, create: bool = False) -> None:
        self.path = os.fspath(path)
        exists = os.path.exists(self.path)
        if not exists and not create:
            raise InputError("no such fleet database (create it with `qemu-evmcs fleet import`)", file=self.path)
        if exists and os.path.getsize(self.path) > 0 and not is_database(self.path):
            raise InputError("not an SQLite fleet database", file=self.path)
        try:
            self.conn = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as err:
            raise InputError(f"cannot open database: {err}", file=self.path) from None
        self.conn.execute("PRAGMA foreign_keys = ON")
        try:
            self._check_schema(create)
        except sqlite3.DatabaseError as err:
            self.conn.close()
            raise InputError(f"not a fleet database: {err}", file=self.path) from None

    def _check_schema(self, create: bool) -> None:
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            if not create:
                raise InputError("empty database, not a fleet inventory", file=self.path)
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in _SCHEMA.strip().split(";"):
                    if stmt.strip():
                        self.conn.execute(stmt)
                self.conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            return
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
    def import_paths(self, paths: Sequence[PathLike], *, pool: str | None = None,
                     progress: bool | None = None) -> ImportResult:
        """Import (or re-import) profile files and directories, incrementally, in ONE transaction.

        A file whose (mtime, size) or, failing that, SHA-256 is unchanged is skipped; a changed file's hosts
        are replaced; files gone from an imported directory (or a missing imported file) are deleted
        with their hosts. ``pool`` sets the pool of every host of these paths; without it, a re-imported
        file keeps its pool. Any error rolls everything back and is raised (naming the file).
        """
        res = ImportResult()
        loader = FleetLoader()
        known: dict[str, tuple[int, int, str, str | None, str]] = {
            r[0]: (r[1], r[2], r[3], r[4], r[5])
            for r in self.conn.execute("SELECT path, mtime_ns, size, sha256, pool, root FROM files")}
        # Phase 1: scan and parse (nothing written yet).
        seen: set[str] = set()
        replace: list[tuple[str, str, int, int, str, str | None, list[tuple[str, str]]]] = []
        touch: list[tuple[int, int, str, str | None, str, str]] = []
        gone: list[str] = []
        roots = [os.path.abspath(os.fspath(p)) for p in paths]
        listings: list[tuple[str, list[str]]] = []
        for root in roots:
            if os.path.isdir(root):
                files = profile_files(root)
                if not files and not any(row[4] == root for row in known.values()):
                    # Never imported and nothing to import: say so rather than "0 hosts" and exit 0.
                    raise InputError("no host profiles found" + subdir_hint([os.fspath(root)]),
                                     file=os.fspath(root))
                listings.append((root, files))
            elif os.path.exists(root):
                listings.append((root, [root]))
            elif any(row[4] == root for row in known.values()):
                listings.append((root, []))   # an imported file that was deleted: remove its hosts
            else:
                raise InputError("no such file or directory", file=os.fspath(root))
        total = sum(len(files) for _, files in listings)
        with Progress(total, "importing files", enabled=progress) as bar:
            for root, files in listings:
                for f in files:
                    bar.update(1)
                    if f in seen:
                        continue
                    seen.add(f)
                    try:
                        st = os.stat(f)
                    except OSError as err:
                        raise InputError(err.strerror or str(err), file=f) from None
                    old = known.get(f)
                    new_pool = pool if pool is not None else (old[3] if old else None)
                    if old and old[0] == st.st_mtime_ns and old[1] == st.st_size:
                        res.unchanged += 1
                        if new_pool != old[3] or root != old[4]:
                            touch.append((st.st_mtime_ns, st.st_size, old[2], new_pool, root, f))
                        continue
                    sha = _file_sha256(f)  # streamed: memory does not grow with the file
                    if old and old[2] == sha:
                        res.unchanged += 1
                        touch.append((st.st_mtime_ns, st.st_size, sha, new_pool, root, f))
                        continue
                    hosts = loader.add_file(f)
                    if not hosts:
                        raise InputError("no host profile in file", file=f)
                    replace.append((f, root, st.st_mtime_ns, st.st_size, sha, new_pool, hosts))
                    if old:
                        res.updated += 1
                    else:
                        res.added += 1
            current = {root: set(files) for root, files in listings}
            gone = [path for path, row in known.items()
                    if row[4] in current and path not in current[row[4]] and path not in seen]
        res.removed = len(gone)
        res.parsed_documents = loader.parsed
        # Phase 2: write everything in one transaction.
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for path in gone:
                conn.execute("DELETE FROM hosts WHERE file = ?", (path,))
                conn.execute("DELETE FROM files WHERE path = ?", (path,))
            for f, *_ in replace:
                conn.execute("DELETE FROM hosts WHERE file = ?", (f,))
            conn.executemany("UPDATE files SET mtime_ns = ?, size = ?, sha256 = ?, pool = ?, root = ? WHERE path = ?",
                             touch)
            conn.executemany("UPDATE hosts SET pool = ? WHERE file = ?", [(t[3], t[5]) for t in touch])
            for fp, prof in loader.fleet.distinct.items():
                self._put_profile(fp, prof)
            for f, root, mtime, size, sha, fpool, hosts in replace:
                conn.execute("INSERT OR REPLACE INTO files (path, root, mtime_ns, size, sha256, pool) "
                             "VALUES (?, ?, ?, ?, ?, ?)", (f, root, mtime, size, sha, fpool))
                try:
                    conn.executemany("INSERT INTO hosts (name, fingerprint, file, doc, pool) VALUES (?, ?, ?, ?, ?)",
                                     [(name, fp, f, i, fpool) for i, (name, fp) in enumerate(hosts)])
                except sqlite3.IntegrityError:
                    raise self._duplicate(f, hosts) from None
            conn.execute("DELETE FROM profiles WHERE fingerprint NOT IN (SELECT DISTINCT fingerprint FROM hosts)")
            res.hosts = conn.execute("SELECT COUNT(*) FROM hosts").fetchone()[0]
            res.distinct = conn.execute("SELECT COUNT(*) FROM profiles").fetchone()[0]
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return res

    def _duplicate(self, f: str, hosts: list[tuple[str, str]]) -> InputError:
        for name, _ in hosts:
            row = self.conn.execute("SELECT file FROM hosts WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] != f:
                return InputError(f"duplicate host name {name!r} (already imported from {row[0]})", file=f, key="name")
        return InputError("duplicate host name in file", file=f, key="name")

    def _put_profile(self, fp: str, prof: HostProfile) -> None:
        data = prof.to_mapping()
        self.conn.execute(
            "INSERT OR IGNORE INTO profiles (fingerprint, vendor, kernel, era, model_name, nested, data, source) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (fp, prof.vendor, prof.kernel, prof.era.id, prof.model_name, int(prof.nested),
             json.dumps(data, sort_keys=True), prof.source))

    # ------------------------------------------------------------------ reading
    def profiles(self) -> dict[str, HostProfile]:
        """Stored fingerprint -> representative profile (re-validated)."""
        out: dict[str, HostProfile] = {}
        rows = self.conn.execute("SELECT fingerprint, data, source FROM profiles ORDER BY fingerprint")
        for fp, data, source in rows:
            out[fp] = profile_from_mapping(json.loads(data), file=source or self.path)
        return out

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
            real = remap[fp]
            fleet.members.setdefault(real, []).append(name)
            if hpool is not None:
                fleet.pools[name] = hpool
        fleet.distinct = {fp: p for fp, p in fleet.distinct.items() if fp in fleet.members}
        return fleet

    def query(self, *, era: str | None = None, feature: str | None = None, view: str = "guest",
              pool: str | None = None) -> list[dict[str, Any]]:
        """Hosts matching every given filter: ``[{name, pool, fingerprint, kernel, era, vendor, file}]``.

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
            if era is not None and prof.era.id != era:
                continue
            if canon is not None:
                feats = host_features(prof) if view == "host" else guest_features(prof)
                if canon not in feats:
                    continue
            keep[fp] = prof
        sql = "SELECT name, fingerprint, pool, file FROM hosts"
        args: tuple[str, ...] = ()
        if pool is not None:
            sql += " WHERE pool = ?"
            args = (pool,)
        out: list[dict[str, Any]] = []
        for name, fp, hpool, f in self.conn.execute(sql + " ORDER BY name", args):
            hit = keep.get(fp)
            if hit is None:
                continue
            out.append({"name": name, "pool": hpool, "fingerprint": fp, "vendor": hit.vendor,
                        "kernel": f"{hit.version.major}.{hit.version.minor}", "era": hit.era.id, "file": f})
        return out

    def stats(self) -> dict[str, Any]:
        """Counts: hosts, files, distinct profiles, by pool, era, vendor and CPU."""
        c = self.conn
        by_era: dict[str, int] = {}
        by_vendor: dict[str, int] = {}
        by_cpu: dict[str, int] = {}
        nested_off = 0
        for era, vendor, model, nested, n in c.execute(
                "SELECT p.era, p.vendor, p.model_name, p.nested, COUNT(*) FROM hosts h "
                "JOIN profiles p ON p.fingerprint = h.fingerprint GROUP BY p.fingerprint"):
            by_era[era] = by_era.get(era, 0) + n
            by_vendor[vendor] = by_vendor.get(vendor, 0) + n
            cpu = model or vendor
            by_cpu[cpu] = by_cpu.get(cpu, 0) + n
            if not nested:
                nested_off += n
        pools = {(p if p is not None else "(none)"): n
                 for p, n in c.execute("SELECT pool, COUNT(*) FROM hosts GROUP BY pool ORDER BY pool")}
        return {
            "database": self.path,
            "schema_version": SCHEMA_VERSION,
            "hosts": c.execute("SELECT COUNT(*) FROM hosts").fetchone()[0],
            "files": c.execute("SELECT COUNT(*) FROM files").fetchone()[0],
            "distinct_profiles": c.execute("SELECT COUNT(*) FROM profiles").fetchone()[0],
            "nested_off_hosts": nested_off,
            "pools": pools,
            "eras": dict(sorted(by_era.items())),
            "vendors": dict(sorted(by_vendor.items())),
            "cpus": dict(sorted(by_cpu.items())),
        }
