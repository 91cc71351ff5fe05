"""Fleet scale: load 100,000 host profiles fast, computing each distinct profile once; SQLite inventory.

Why: a fleet has few distinct hosts (CPU generation x kernel era x a few knobs) and many copies of each.
Every fleet command (baseline, negotiate, admit, compare-designs, report) works per distinct profile
(:meth:`HostProfile.fingerprint`) and maps the answer back to host names, so the work is proportional to
the number of distinct profiles. What remains proportional to the number of hosts is *reading* them, and
PyYAML needs about 1 ms per document, far too slow for 100,000. So:

**Fast loading** (:class:`FleetLoader`): each YAML document's text is reduced to a *key*: the text with
the host-specific top-level entries (``name``, ``notes``, ``provenance``) and column-0 comment lines cut
out, each replaced by a marker that keeps its position. Only the first document with a new key is
parsed (libyaml's ``CSafeLoader`` when available, else ``SafeLoader``; both safe loaders) and validated
in full; later documents with the same key only need their name (a one-line regex) and, when present,
a validity check of their ``notes``/``provenance`` value (regex, else a tiny standalone safe parse). That
first parse also proves the key sound: every cut region must be exactly one top-level ``key: scalar``
entry, or a comment line outside every entry; otherwise (and for anchors, aliases, directives, explicit
``...`` ends, or a missing or odd ``name``) documents are parsed in full, one by one, exactly like
:func:`qemu_evmcs.core.profile.iter_profiles`. Multi-document files are streamed in chunks (memory does not
grow with the file); the 4 MiB limit of a profile applies per document.

**Both cores** (:func:`load_fleet`): from 16 MiB of YAML or 4,000 files, the input is cut into one part
per usable CPU (at most 4; ``QEMU_EVMCS_LOAD_WORKERS`` overrides) on ``---`` lines (or between files); the
calling process loads the first part while ``os.fork``-ed children load the others with their own
loaders and send back (pickled) their members and representatives. They are merged in input order, so
the fleet is identical to a one-process load: same host order, same first-seen representative. If a
child fails (bad input) or host names repeat across parts, the later parts are loaded again in the
calling process, so errors (file, line, message) are exactly those of a one-process load. Forking is
skipped when other threads run.

**Inventory** (``fleet import``): SQLite (stdlib ``sqlite3``) storing files (path, mtime, size, SHA-256,
pool), hosts (name, fingerprint, file, pool) and each distinct profile once. Re-import is incremental
and runs in ONE transaction: a failure anywhere leaves the database exactly as it was.

Public API (for the other fleet commands)::

    fleet = load_fleet(["fleet-dir/"])        # or "fleet.yaml", or "inventory.db"
    for fp, profile in fleet.distinct.items():  # once per distinct profile
        answer = compute(profile)
        hosts = fleet.members[fp]                # every host with that profile
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Self, Union, cast

import yaml

from qemu_evmcs.core.errors import InputError, KvmError
from qemu_evmcs.core.kernel import era_table
from qemu_evmcs.core.msrval import feature_set
from qemu_evmcs.core.profile import MAX_PROFILE_BYTES, HostProfile, iter_documents, profile_from_mapping
from qemu_evmcs.output.progress import Progress
from qemu_evmcs.core.registry import registry

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

PathLike = Union[str, "os.PathLike[str]"]

#: Read multi-document files in pieces of this many bytes (memory stays flat for any file size).
CHUNK_BYTES = 8 * 1024 * 1024
#: Files shorter than this are read with one system call.
SMALL_FILE = 64 * 1024


# =========================================================================== the Fleet

@dataclass
class Fleet:
    """Hosts grouped by profile fingerprint.

    :ivar distinct: fingerprint -> one representative :class:`HostProfile` (the first host seen).
    :ivar members: fingerprint -> every host name with that fingerprint, in load order.
    :ivar pools: host name -> pool, for hosts that have one (only from an inventory database).
    :ivar source: what was loaded (paths or the database path), for messages.
    """

    distinct: dict[str, HostProfile] = field(default_factory=dict)
    members: dict[str, list[str]] = field(default_factory=dict)
    pools: dict[str, str] = field(default_factory=dict)
    source: str = ""

    @property
    def host_count(self) -> int:
        """Number of hosts."""
        return sum(len(v) for v in self.members.values())

    def __len__(self) -> int:
        return self.host_count

    def groups(self) -> list[tuple[str, HostProfile, list[str]]]:
        """``(fingerprint, representative, hosts)``, largest group first (ties: by fingerprint)."""
        return sorted(((fp, self.distinct[fp], self.members[fp]) for fp in self.distinct),
                      key=lambda g: (-len(g[2]), g[0]))

    def host_names(self) -> Iterator[str]:
        """Every host name (grouped by fingerprint)."""
        for names in self.members.values():
            yield from names

    def fingerprint_of(self) -> dict[str, str]:
        """host name -> fingerprint (built on demand: 100k entries)."""
        return {n: fp for fp, names in self.members.items() for n in names}

    def expand(self, per_fingerprint: Mapping[str, Any]) -> dict[str, Any]:
        """Map per-fingerprint results back to every host: ``{host: result}``."""
        return {n: per_fingerprint[fp] for fp, names in self.members.items() if fp in per_fingerprint
                for n in names}

    def iter_hosts(self) -> Iterator[HostProfile]:
        """Every host as a profile (for APIs that take ``Iterable[HostProfile]``), cheaply.

        Each item is a light proxy of its group's representative with the host's ``name`` and a cached
        ``fingerprint()`` (no per-host hashing or copying): 100,000 hosts cost about 0.1 s.
        """
        for fp, names in self.members.items():
            rep = self.distinct[fp]
            for n in names:
                yield cast(HostProfile, _FleetHost(n, fp, rep))

    def add(self, profile: HostProfile, name: str | None = None) -> str:
        """Add one host (``name`` overrides ``profile.name``); returns its fingerprint."""
        fp = profile.fingerprint()
        self.distinct.setdefault(fp, profile)
        self.members.setdefault(fp, []).append(name if name is not None else profile.name)
        return fp


class _FleetHost:
    """A host of a :class:`Fleet`: its name, its group's fingerprint, everything else from the representative."""

    __slots__ = ("name", "_fp", "_rep")

    def __init__(self, name: str, fp: str, rep: HostProfile) -> None:
        self.name = name
        self._fp = fp
        self._rep = rep

    def fingerprint(self) -> str:
        return self._fp

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._rep, attr)


# =========================================================================== fast document loading

# A region cut out of a document for its key: "\n" + a column-0 comment, or a top-level
# name/notes/provenance entry with its indented continuation lines.
_CUT = re.compile(r"\n(#|name|notes|provenance)((?<=#)[^\n]*|[ \t]*:(?=[ \t\n])[^\n]*(?:\n[ \t][^\n]*)*)")
# Segments holding any of these are parsed in full (explicit document end, directives, "--- x").
_ODD = re.compile(r"\n(?:\.\.\.|%|---[^\n])")
# Text with any of these takes the general path of add_text: directives, explicit ends, "---" followed by
# anything but a newline, and "---" lines back to back (an empty document).
_NOT_FAST = re.compile(r"\n(?:%|\.\.\.|---(?!\n)|---\n---)")
_YAML11_WORDS = frozenset(["yes", "no", "true", "false", "on", "off", "null", "y", "n"])
_NAME_FAST = re.compile(
    r"[ \t]*:[ \t]+(?:([A-Za-z_][A-Za-z0-9_.@/+-]*)|'([^'\n]*)'|\"([^\"\\\n]*)\")[ \t]*(?:[ \t]#[^\n]*)?")
_TEXT_FAST = re.compile(r"[ \t]*:(?:[ \t]+(?:'[^'\n]*'|\"[^\"\\\n]*\"))?[ \t]*")
_UNSAFE = ""  # key cache value: "parse every document with this key in full"


def _shift(err: InputError, offset: int) -> InputError:
    if err.line is not None and offset:
        err.line += offset
    return err


class FleetLoader:
    """Streaming loader that parses each distinct document text once.

    Feed it with :meth:`add_path` (files and directories) or :meth:`add_text`; the result accumulates
    in :attr:`fleet`. Host names must be unique across everything fed to one loader.

    :ivar parsed: how many documents were parsed in full (the rest took the fast path).
    """

    def __init__(self, fleet: Fleet | None = None, progress: Progress | None = None) -> None:
        self.fleet = fleet if fleet is not None else Fleet()
        self.progress = progress
        self._keys: dict[str, str] = {}          # key text -> fingerprint, or _UNSAFE
        self._layouts: dict[str, tuple[str, int, tuple[int, ...]]] = {}   # trusted key -> see _layout
        self._text_ok: set[str] = set()          # notes/provenance blocks known to hold a string
        self._where: dict[str, str] = {}         # host name -> file (duplicate detection)
        self.parsed = 0
        self.documents = 0

    # ------------------------------------------------------------------ entry points
    def add_path(self, path: str) -> list[tuple[str, str]]:
        """A file (multi-document allowed) or a directory (``*.yaml``/``*.yml``, sorted, like
        :func:`~qemu_evmcs.core.profile.iter_profiles`). Returns ``[(host, fingerprint)]`` added."""
        if os.path.isdir(path):
            out: list[tuple[str, str]] = []
            try:
                names = sorted(n for n in os.listdir(path) if n.endswith((".yaml", ".yml")))
            except OSError as err:
                raise InputError(err.strerror or str(err), file=path) from None
            for n in names:
                out += self.add_path(os.path.join(path, n))
            return out
        return self.add_file(path)

    def add_file(self, path: str, start: int = 0, end: int | None = None, line0: int = 0) -> list[tuple[str, str]]:
        """One file, streamed in chunks that end on a ``---`` line.

        ``start``/``end``: only this byte range (``start`` on a ``---`` line or 0, ``end`` exclusive, ``None``:
        to the end of the file), whose first line is 0-based line ``line0`` of the file.
        """
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as err:
            raise InputError(err.strerror or str(err), file=path) from None
        try:
            if start == 0 and end is None:
                # Small files (the one-host-per-file layout) in one read; large ones streamed.
                data = os.read(fd, SMALL_FILE)
                if len(data) < SMALL_FILE:
                    if self.progress is not None:
                        self.progress.update(len(data))
                    return self.add_text(self._decode(data, path, 0), path) if data else []
            with os.fdopen(os.dup(fd), "rb") as fh:
                fh.seek(start)
                return self._stream(fh, path, None if end is None else end - start, line0, start)
        except OSError as err:
            raise InputError(err.strerror or str(err), file=path) from None
        finally:
            os.close(fd)

    def _stream(self, fh: BinaryIO, path: str, limit: int | None = None, line0: int = 0,
                consumed: int = 0) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        carry = b""
        while True:
            want = CHUNK_BYTES if limit is None else min(CHUNK_BYTES, limit)
            block = fh.read(want) if want > 0 else b""
            if limit is not None:
                limit -= len(block)
            buf = carry + block if carry else block
            if not block:
                if buf:
                    out += self.add_text(self._decode(buf, path, consumed), path, line0)
                    if self.progress is not None:
                        self.progress.update(len(buf))
                return out
            cut = buf.rfind(b"\n---\n")
            if cut < 0:
                if len(buf) > MAX_PROFILE_BYTES + CHUNK_BYTES:
                    raise InputError(f"a document exceeds {MAX_PROFILE_BYTES} bytes", file=path, line=line0 + 1)
                carry = buf
                continue
            head, carry = buf[:cut + 1], buf[cut + 1:]
            out += self.add_text(self._decode(head, path, consumed), path, line0)
            line0 += head.count(b"\n")
            consumed += len(head)
            if self.progress is not None:
                self.progress.update(len(head))

    @staticmethod
    def _decode(data: bytes, path: str, base: int) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputError(f"not UTF-8 text ({err.reason} at byte {base + err.start})", file=path) from None

    def add_text(self, text: str, path: str, line0: int = 0) -> list[tuple[str, str]]:
        """Every document of ``text`` (which starts at 0-based line ``line0`` of ``path``)."""
        out: list[tuple[str, str]] = []
        # Split on lines that are exactly "---"; the leading "\n" lets a first "---" line split too.
        t = "\n" + text
        if _NOT_FAST.search(t) is None:
            if "\n---" not in t:
                return self._single(t, path, line0)
            return self._fast_lane(t, path, line0)
        del t
        segments = ("\n" + text).split("\n---\n")
        pending = ""
        pending_line = 0
        directives = text.startswith("%") or "\n%" in text
        for i, raw in enumerate(segments):
            seg_line = line0
            if i == 0:
                seg = raw[1:]
                line0 += raw.count("\n") + 1   # the added "\n" stands for the newline of no line
            else:
                seg = raw
                line0 += raw.count("\n") + 2
            seg = seg.removesuffix("\n")
            if pending:
                seg = pending + "\n---\n" + seg
                seg_line = pending_line
                pending = ""
            if directives and ("\n" + seg).find("\n%") >= 0 and not self._has_content_after_directive(seg):
                # Directives belong to the next document: parse them together.
                pending, pending_line = seg, seg_line
                continue
            out += self._generic(seg, path, seg_line, i > 0)
        if pending:
            out += self._slow(pending, path, pending_line)
        return out

    def _generic(self, seg: str, path: str, seg_line: int, explicit: bool) -> list[tuple[str, str]]:
        """One document's text; ``explicit``: it followed a ``---`` line (so even an empty one is a null document)."""
        if len(seg) > MAX_PROFILE_BYTES:
            raise InputError(f"document is {len(seg)} bytes; host profiles are limited to {MAX_PROFILE_BYTES}",
                             file=path, line=seg_line + 1)
        if seg.strip():
            return self._segment(seg, path, seg_line, explicit)
        if explicit:
            return self._slow("---\n" + seg, path, seg_line - 1)
        return []

    def _fast_lane(self, t: str, path: str, line0: int) -> list[tuple[str, str]]:
        """:meth:`add_text` for text whose only document markers are plain ``---`` lines (the common case).

        ``t`` is the text with a ``"\\n"`` in front. Per document: one C-level split, a dict look-up and a
        name regex; line numbers are computed only when a document needs the full treatment.
        """
        out: list[tuple[str, str]] = []
        segs = t.split("\n---")          # every piece starts with "\n" (the end of the previous line)
        layouts = self._layouts
        text_ok = self._text_ok
        cut_split = _CUT.split
        name_match = _NAME_FAST.fullmatch
        words = _YAML11_WORDS
        where = self._where
        members = self.fleet.members
        add = out.append
        fast = 0
        pos = 0
        seen_pos = seen_lines = 0      # newlines of t before seen_pos
        for i, seg in enumerate(segs):
            start = pos
            pos += len(seg) + 4
            if seg.endswith("\n"):
                seg = seg[:-1]            # the last document of a text: same key as the others
            if len(seg) <= MAX_PROFILE_BYTES:
                parts = cut_split(seg)
                key = "\x00".join(parts[0::3]) + "\x01" + "|".join(parts[1::3])
                entry = layouts.get(key)
                if entry is None:
                    entry = self._layout(key)
                if entry is not None:
                    fp, ni, tix = entry
                    # The name: a plain scalar that YAML 1.1 reads as a string (the common case), else quoted.
                    m = name_match(parts[ni])
                    name = m[1] if m is not None else None
                    if name is None or name.lower() in words:
                        name = self._fast_name(parts[ni])
                    if (name is not None and name not in where
                            and (not tix or all(parts[j] in text_ok or self._text_block_ok(parts[j - 1], parts[j])
                                                for j in tix))):
                        fast += 1
                        where[name] = path
                        group = members.get(fp)
                        if group is None:
                            members[fp] = [name]
                        else:
                            group.append(name)
                        add((name, fp))
                        continue
            # The full treatment (first of its kind, odd name, duplicate, ...), with the real line number.
            seen_lines += t.count("\n", seen_pos, start + 1)
            seen_pos = start + 1
            out += self._generic(seg[1:], path, line0 + seen_lines - 1, i > 0)
        self.documents += fast
        return out

    def _single(self, t: str, path: str, line0: int) -> list[tuple[str, str]]:
        """:meth:`_fast_lane` for a text of one document without ``---`` (the one-host-per-file layout)."""
        seg = t[:-1] if t.endswith("\n") else t
        if len(seg) <= MAX_PROFILE_BYTES:
            parts = _CUT.split(seg)
            key = "\x00".join(parts[0::3]) + "\x01" + "|".join(parts[1::3])
            entry = self._layouts.get(key) or self._layout(key)
            if entry is not None:
                fp, ni, tix = entry
                name = self._fast_name(parts[ni])
                if (name is not None and name not in self._where
                        and all(parts[j] in self._text_ok or self._text_block_ok(parts[j - 1], parts[j]) for j in tix)):
                    self.documents += 1
                    self._where[name] = path
                    group = self.fleet.members.get(fp)
                    if group is None:
                        self.fleet.members[fp] = [name]
                    else:
                        group.append(name)
                    return [(name, fp)]
        return self._generic(seg[1:], path, line0, False)

    def _layout(self, key: str) -> tuple[str, int, tuple[int, ...]] | None:
        """For a trusted key: (fingerprint, index of the name block, indexes of notes/provenance blocks)."""
        fp = self._keys.get(key)
        if not fp:
            return None
        kinds = key.rsplit("\x01", 1)[1].split("|")
        ni = 3 * kinds.index("name") + 2
        tix = tuple(3 * k + 2 for k, kind in enumerate(kinds) if kind in ("notes", "provenance"))
        entry = (fp, ni, tix)
        self._layouts[key] = entry
        return entry

    def _member_fast(self, name: str, fp: str, path: str) -> bool:
        """Add a host unless its name is taken (then ``False``: the caller reports it with a line)."""
        if name in self._where:
            return False
        self._where[name] = path
        self.fleet.members.setdefault(fp, []).append(name)
        return True

    @staticmethod
    def _has_content_after_directive(seg: str) -> bool:
        """Does a segment with a ``%`` directive also hold its document (after a ``--- x`` line)?"""
        for line in reversed(seg.split("\n")):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            return not s.startswith("%")
        return False

    # ------------------------------------------------------------------ one document
    def _segment(self, seg: str, path: str, line0: int, explicit: bool) -> list[tuple[str, str]]:
        self.documents += 1
        s2 = "\n" + seg
        if _ODD.search(s2) is not None:
            return self._slow(seg, path, line0)
        parts = _CUT.split(s2)
        kinds = parts[1::3]
        if kinds.count("name") != 1:
            return self._slow("---\n" + seg, path, line0 - 1) if explicit else self._slow(seg, path, line0)
        key = "\x00".join(parts[0::3]) + "\x01" + "|".join(kinds)
        fp = self._keys.get(key)
        if fp is None:
            return self._first(seg, path, line0, key)
        if fp == _UNSAFE:
            return self._slow(seg, path, line0)
        blocks = parts[2::3]
        name: str | None = None
        for kind, block in zip(kinds, blocks, strict=True):
            if kind == "name":
                name = self._fast_name(block)
                if name is None:
                    return self._slow(seg, path, line0)
            elif kind != "#" and block not in self._text_ok and not self._text_block_ok(kind, block):
                return self._slow(seg, path, line0)
        assert name is not None
        self._member(name, fp, path, seg, line0)
        return [(name, fp)]

    @staticmethod
    def _fast_name(block: str) -> str | None:
        m = _NAME_FAST.fullmatch(block)
        if m is None:
            return None
        plain, single, double = m.groups()
        if plain is not None:
            return None if plain.lower() in _YAML11_WORDS else plain
        name = single if single is not None else double
        return name if name and name.strip() else None

    def _text_block_ok(self, kind: str, block: str) -> bool:
        """Is this ``notes``/``provenance`` entry a string (or null) on its own?"""
        if _TEXT_FAST.fullmatch(block) is None:
            if "&" in block or "*" in block:
                return False
            try:
                data = yaml.load(kind + block, Loader=_Loader)
            except yaml.YAMLError:
                return False
            if not (isinstance(data, dict) and list(data) == [kind] and isinstance(data[kind], (str, type(None)))):
                return False
        if len(self._text_ok) < 100_000:
            self._text_ok.add(block)
        return True

    def _member(self, name: str, fp: str, path: str, seg: str, line0: int) -> None:
        other = self._where.get(name)
        if other is not None:
            m = re.search(r"(?m)^name[ \t]*:", seg)
            line = line0 + seg.count("\n", 0, m.start()) + 1 if m else None
            raise InputError(f"duplicate host name {name!r} (also in {other})", file=path, key="name", line=line)
        self._where[name] = path
        self.fleet.members.setdefault(fp, []).append(name)

    def _first(self, seg: str, path: str, line0: int, key: str) -> list[tuple[str, str]]:
        """Parse a document with a new key in full; record whether the key may be trusted.

        Parsing and validation are exactly :func:`~qemu_evmcs.core.profile.iter_documents` +
        :func:`~qemu_evmcs.core.profile.profile_from_mapping`; the (fast, C) composer is used only afterwards,
        on the validated text, to check that the key's cuts are sound.
        """
        out = self._slow(seg, path, line0)
        if len(out) != 1:
            self._keys[key] = _UNSAFE
            return out
        try:
            node = yaml.compose(seg, Loader=_Loader)
        except (yaml.YAMLError, RecursionError):  # pragma: no cover - the text was just parsed
            node = None
        self._keys[key] = out[0][1] if node is not None and self._sound(seg, node) else _UNSAFE
        return out

    def _adopt(self, prof: HostProfile) -> str:
        fp = prof.fingerprint()
        if fp not in self.fleet.distinct:
            self.fleet.distinct[fp] = prof
        return fp

    @staticmethod
    def _sound(seg: str, node: yaml.Node) -> bool:
        """Does cutting the regions out of ``seg`` keep everything else's meaning (see module doc)?"""
        if not isinstance(node, yaml.MappingNode) or "&" in seg or "*" in seg:
            return False
        spans: list[tuple[str, int, int, bool]] = []   # key, first line, last line, value is a scalar
        for k, v in node.value:
            end = v.end_mark.line if v.end_mark.column > 0 else v.end_mark.line - 1
            spans.append((str(k.value), k.start_mark.line, max(end, k.start_mark.line),
                          isinstance(v, yaml.ScalarNode)))
        quoted = list(_multiline_quoted(node))
        s2 = "\n" + seg
        for m in _CUT.finditer(s2):
            first = s2.count("\n", 0, m.start())
            last = first + m.group(0).count("\n") - 1
            kind = m.group(1)
            if kind == "#":
                if any(a < first <= b for a, b in quoted):
                    return False
                continue
            match = [s for s in spans if s[1] == first]
            if len(match) != 1 or match[0][0] != kind or not match[0][3] or match[0][2] > last:
                return False
            if any(first < a <= last for _, a, _, _ in spans):
                return False
        return True

    def _slow(self, seg: str, path: str, line0: int) -> list[tuple[str, str]]:
        """Parse every document of ``seg`` in full (what :func:`iter_profiles` does)."""
        out: list[tuple[str, str]] = []
        try:
            for data, lines in iter_documents(seg, path):
                self.parsed += 1
                prof = profile_from_mapping(data, file=path, lines={k: v + line0 for k, v in lines.items()})
                fp = self._adopt(prof)
                self._member(prof.name, fp, path, seg, line0)
                out.append((prof.name, fp))
        except InputError as err:
            if err.key is None or err.line is None:
                raise _shift(err, line0) from None
            raise
        return out


def _multiline_quoted(node: yaml.Node) -> Iterator[tuple[int, int]]:
    """(first, last) lines of every quoted scalar spanning lines: a column-0 "#" line inside is text."""
    if isinstance(node, yaml.ScalarNode):
        if node.style in ("'", '"') and node.end_mark.line > node.start_mark.line:
            yield node.start_mark.line, node.end_mark.line
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            yield from _multiline_quoted(k)
            yield from _multiline_quoted(v)
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            yield from _multiline_quoted(v)


def is_database(path: PathLike) -> bool:
    """Is ``path`` an existing SQLite file (by its 16-byte header)?"""
    try:
        with open(path, "rb") as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


#: Split the loading over several processes (``os.fork``) from this many bytes of multi-document files ...
PARALLEL_MIN_BYTES = 16 * 1024 * 1024
#: ... or this many files.
PARALLEL_MIN_FILES = 4000
#: At most this many loading processes (the calling one included).
MAX_WORKERS = 4

#: A piece of input: (path, first byte, end byte or ``None`` for the end of the file).
_Unit = tuple[str, int, "int | None"]


def _default_workers() -> int:
    """Loading processes to use: ``QEMU_EVMCS_LOAD_WORKERS`` if set, else the usable CPUs (at most 4)."""
    env = os.environ.get("QEMU_EVMCS_LOAD_WORKERS", "").strip()
    if env.isdigit() and int(env) > 0:
        return min(int(env), 16)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORKERS))


def _can_fork() -> bool:
    """Forking is safe only from a single-threaded process (a forked thread's locks stay held)."""
    import threading
    return hasattr(os, "fork") and threading.active_count() == 1


def _doc_boundary(path: str, offset: int, size: int) -> int:
    """The first ``---`` line at or after ``offset`` (its byte offset), not after a ``%`` directive line;
    ``size`` when there is none."""
    with open(path, "rb") as fh:
        pos = max(0, offset - 1)
        fh.seek(pos)
        tail = b""
        while pos < size:
            block = fh.read(CHUNK_BYTES)
            if not block:
                break
            buf = tail + block
            base = pos - len(tail)
            i = buf.find(b"\n---\n")
            while i >= 0:
                line_start = buf.rfind(b"\n", 0, i) + 1
                if line_start > 0 or base == 0:
                    if not buf.startswith(b"%", line_start):
                        return base + i + 1
                i = buf.find(b"\n---\n", i + 1)
            pos += len(block)
            tail = buf[-(4 + 4096):]       # a "\n---\n" across blocks, and the line before it
    return size


def _split(units: list[_Unit], parts: int) -> list[list[_Unit]]:
    """Cut ``units`` into up to ``parts`` consecutive pieces of about equal work, on document boundaries."""
    if parts < 2:
        return [units]
    if len(units) >= PARALLEL_MIN_FILES:        # many files: by count
        step = -(-len(units) // parts)
        return [units[i:i + step] for i in range(0, len(units), step)]
    sizes: list[int] = []
    for path, _, _ in units:
        try:
            sizes.append(os.path.getsize(path))
        except OSError:
            return [units]          # let the sequential loader report it, in order
    total = sum(sizes)
    if total < PARALLEL_MIN_BYTES:
        return [units]
    out: list[list[_Unit]] = [[]]
    acc = 0
    goal = total / parts
    for (path, _, _), size in zip(units, sizes, strict=True):
        start = 0
        while len(out) < parts and acc + (size - start) > goal * len(out):
            want = int(goal * len(out) - acc) + start
            cut = _doc_boundary(path, want, size) if want > 0 else 0
            if cut >= size:
                break
            if cut > start:
                out[-1].append((path, start, cut))
            acc += cut - start
            start = cut
            out.append([])
        out[-1].append((path, start, None))
        acc += size - start
    return [p for p in out if p]


def _line_of(path: str, offset: int) -> int:
    """0-based line number of byte ``offset`` of ``path``."""
    n = 0
    with open(path, "rb") as fh:
        while offset > 0:
            block = fh.read(min(CHUNK_BYTES, offset))
            if not block:
                break
            n += block.count(b"\n")
            offset -= len(block)
    return n


def _run_units(loader: FleetLoader, units: list[_Unit], tick: Progress | None, exact_lines: bool = True) -> None:
    for path, start, end in units:
        loader.add_file(path, start, end, _line_of(path, start) if start and exact_lines else 0)
        if tick is not None:
            tick.update(1)


def _child(units: list[_Unit], wfd: int) -> None:  # pragma: no cover - runs in a forked process
    """Load ``units`` with a fresh loader and send (members, distinct, documents, parsed) down ``wfd``;
    on any error send nothing (the parent then loads them itself and reports the error exactly)."""
    import pickle
    try:
        payload = b""
        try:
            sub = FleetLoader()
            _run_units(sub, units, None, exact_lines=False)
            payload = pickle.dumps((sub.fleet.members, sub.fleet.distinct, sub.documents, sub.parsed),
                                   protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException:
            payload = b""
        with os.fdopen(wfd, "wb") as out:
            out.write(payload)
    finally:
        os._exit(0)


def _load_parallel(loader: FleetLoader, parts: list[list[_Unit]], tick: Progress | None) -> None:
    """Load ``parts[0]`` here and every other part in a forked child, then merge in input order.

    The result is exactly the sequential one: members keep load order, each fingerprint's representative is
    its first host, and when a child failed (bad input) or host names repeat across parts, the parts after
    the first are loaded here, sequentially, so the error is reported exactly as without parallelism.
    """
    import pickle
    import signal
    children: list[tuple[int, int]] = []
    try:
        for part in parts[1:]:
            rfd, wfd = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                os.close(rfd)
                for _, r in children:
                    os.close(r)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _child(part, wfd)
            os.close(wfd)
            children.append((pid, rfd))
        _run_units(loader, parts[0], tick)
        results: list[Any] = []
        while children:
            pid, rfd = children[0]
            chunks: list[bytes] = []
            while True:
                b = os.read(rfd, 1 << 20)
                if not b:
                    break
                chunks.append(b)
            os.close(rfd)
            os.waitpid(pid, 0)
            children.pop(0)
            results.append(pickle.loads(b"".join(chunks)) if chunks else None)
    finally:
        for pid, rfd in children:       # an error or interrupt here: stop the other loaders
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:  # pragma: no cover
                pass
            os.close(rfd)
    seen: set[str] = set()
    where = loader._where
    ok = True
    for res in results:
        if res is None:
            ok = False
            break
        for names in res[0].values():
            if not (where.keys().isdisjoint(names) and seen.isdisjoint(names)):
                ok = False
                break
            seen.update(names)
        if not ok:
            break
    if not ok:
        if tick is not None:
            tick.scale = 1.0
        for part in parts[1:]:
            _run_units(loader, part, tick)
        return
    fleet = loader.fleet
    for part, (members, distinct, documents, parsed) in zip(parts[1:], results, strict=True):
        label = part[0][0]
        for fp, names in members.items():
            if fp not in fleet.distinct:
                fleet.distinct[fp] = distinct[fp]
            fleet.members.setdefault(fp, []).extend(names)
            where.update(dict.fromkeys(names, label))
        loader.documents += documents
        loader.parsed += parsed


def load_fleet(source: PathLike | Sequence[PathLike], *, progress: bool | None = None,
               workers: int | None = None) -> Fleet:
    """Load a fleet from profile files/directories or from an inventory database.

    :param source: a path or a list of paths: YAML files (multi-document allowed), directories of
        ``*.yaml``, or ONE SQLite inventory written by ``qemu-evmcs fleet import``.
    :param progress: draw a progress bar on stderr; default: when stderr is a terminal.
    :param workers: loading processes; default ``QEMU_EVMCS_LOAD_WORKERS`` or the usable CPUs (at most 4).
        Large inputs (from 16 MiB of YAML or 4,000 files) are split on document boundaries, each part
        loaded by a forked process; the result is identical to a one-process load.
    :raise InputError: bad input, naming the file, key and line.
    """
    paths = [os.fspath(source)] if isinstance(source, (str, os.PathLike)) else [os.fspath(p) for p in source]
    if not paths:
        raise InputError("no host profiles given")
    if len(paths) == 1 and is_database(paths[0]):
        return FleetDb(paths[0]).load_fleet()
    for p in paths:
        if not os.path.exists(p):
            raise InputError("no such file or directory", file=p)
    nworkers = workers if workers is not None else _default_workers()
    with_dirs = any(os.path.isdir(p) for p in paths)
    loader = FleetLoader()
    loader.fleet.source = ", ".join(paths)
    if with_dirs:
        # Progress in files (a directory's listing is its unit of work).
        units: list[_Unit] = []
        for p in paths:
            units += [(f, 0, None) for f in _listing(p)] if os.path.isdir(p) else [(p, 0, None)]
        with Progress(len(units), "loading host files", enabled=progress) as bar:
            parts = _split(units, nworkers) if nworkers > 1 and _can_fork() else [units]
            if len(parts) > 1:
                bar.scale = len(units) / max(1, len(parts[0]))
                _load_parallel(loader, parts, bar)
            else:
                _run_units(loader, units, bar)
    else:
        units = [(p, 0, None) for p in paths]
        total = _total_bytes(paths)
        with Progress(total, "loading hosts", unit="B", enabled=progress) as bar:
            parts = _split(units, nworkers) if nworkers > 1 and _can_fork() else [units]
            loader.progress = bar
            if len(parts) > 1:
                first = sum((end if end is not None else os.path.getsize(path)) - start
                            for path, start, end in parts[0])
                bar.scale = total / max(1, first)
                _load_parallel(loader, parts, None)
            else:
                _run_units(loader, units, None)
    if not loader.fleet.members:
        raise InputError("no host profiles found" + _subdir_hint(paths), file=paths[0])
    return loader.fleet


def _subdir_hint(paths: Sequence[str]) -> str:
    """For "no host profiles found": a given directory holds only sub-directories (``make-fleet --by-pool``),
    which are not searched."""
    for p in paths:
        if os.path.isdir(p):
            try:
                subdirs = sorted(e.name for e in os.scandir(p) if e.is_dir() and not e.name.endswith((".yaml", ".yml")))
            except OSError:
                continue
            if subdirs:
                return (f" (only *.yaml files directly in {p} are read, not its sub-directories such as "
                        f"{os.path.join(p, subdirs[0])}: pass them, e.g. {os.path.join(p, '*', '')})")
    return ""


def _total_bytes(paths: Sequence[str]) -> int:
    total = 0
    for p in paths:
        try:
            if os.path.isfile(p):
                total += os.path.getsize(p)
        except OSError:
            pass
    return total


def _merge(into: Fleet, other: Fleet, names: dict[str, str], source: str) -> None:
    """Add ``other``'s hosts to ``into``; a host name already loaded from another source is an error."""
    for fp, hosts in other.members.items():
        for n in hosts:
            if n in names:
                raise InputError(f"duplicate host name {n!r} (also in {names[n]})", file=source, key="name")
            names[n] = source
        into.distinct.setdefault(fp, other.distinct[fp])
        into.members.setdefault(fp, []).extend(hosts)
    into.pools.update(other.pools)


def load_hosts_fleet(items: Fleet | Sequence[Any], *, progress: bool | None = None) -> Fleet:
    """Hosts given the way commands take them, as one :class:`Fleet` (each distinct profile parsed once).

    :param items: a :class:`Fleet` (returned as is), or a list of: profile files (multi-document files of any
        size), directories, SQLite inventories written by ``fleet import``, names of bundled sample profiles
        (``skylake-6.3``), and :class:`HostProfile` objects (or hosts of a :class:`Fleet`), in any mix.
        The same path given twice is read once. Host names must be unique across the files and inventories;
        profile objects are taken as they are.
    :param progress: loading progress bar on stderr; default: when stderr is a terminal.
    :raise InputError: a missing path, bad input, a duplicate host name, or no host at all.
    """
    if isinstance(items, Fleet):
        return items
    from qemu_evmcs.core.profile import bundled_name_hint, resolve_profile_path

    out = Fleet()
    names: dict[str, str] = {}        # host name -> where it was loaded from (files and inventories only)
    run: list[str] = []
    seen: set[str] = set()
    sources: list[str] = []

    def flush() -> None:
        if run:
            _merge(out, load_fleet(run, progress=progress), names, ", ".join(run))
            run.clear()

    for item in items:
        if isinstance(item, (str, os.PathLike)):
            raw = os.fspath(item)
            path = resolve_profile_path(raw)
            if not os.path.exists(path):
                hint = bundled_name_hint(raw)
                raise InputError(f"no such host profile {raw!r} (neither a file nor a bundled profile name"
                                 + (f"; {hint})" if hint else ")"))
            key = os.path.realpath(path)
            if key in seen:
                continue
            seen.add(key)
            sources.append(path)
            if is_database(path):
                flush()
                with FleetDb(path) as db:
                    _merge(out, db.load_fleet(), names, path)
            else:
                run.append(path)
        elif isinstance(item, Fleet):
            flush()
            sources.append(item.source)
            _merge(out, item, names, item.source or "a fleet")
        else:
            flush()
            prof = cast(HostProfile, item)
            rep = cast(HostProfile, getattr(item, "_rep", item))   # a host of a Fleet: its representative
            fp = prof.fingerprint()
            out.distinct.setdefault(fp, rep)
            out.members.setdefault(fp, []).append(prof.name)
    flush()
    if not out.members:
        raise InputError("no host profiles given")
    out.source = ", ".join(s for s in sources if s)
    return out


class FleetHosts(Sequence[HostProfile]):
    """Every host of a :class:`Fleet` as a read-only sequence, built on demand (no per-host copies).

    Items are the light per-host views of :meth:`Fleet.iter_hosts`, grouped by fingerprint.
    """

    __slots__ = ("_fleet",)

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet

    def __len__(self) -> int:
        return self._fleet.host_count

    def __iter__(self) -> Iterator[HostProfile]:
        return self._fleet.iter_hosts()

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return list(self)[index]
        i = index if index >= 0 else len(self) + index
        if i >= 0:
            for fp, hosts in self._fleet.members.items():
                if i < len(hosts):
                    return cast(HostProfile, _FleetHost(hosts[i], fp, self._fleet.distinct[fp]))
                i -= len(hosts)
        raise IndexError("host index out of range")


def _listing(path: str) -> list[str]:
    """Profile files under ``path`` the way :func:`iter_profiles` walks it (``*.yaml``/``*.yml``, sorted)."""
    out: list[str] = []
    try:
        with os.scandir(path) as it:
            entries = sorted((e.name, e.is_dir()) for e in it if e.name.endswith((".yaml", ".yml")))
    except OSError as err:
        raise InputError(err.strerror or str(err), file=path) from None
    sep = "" if path.endswith(os.sep) else os.sep
    for name, is_dir in entries:
        full = path + sep + name
        if is_dir:
            out += _listing(full)
        else:
            out.append(full)
    return out


# =========================================================================== views used by queries and the report

def host_features(profile: HostProfile) -> frozenset[str]:
    """Features KVM reports on the system fd (what QEMU and libvirt see): none with nested=0 or on AMD."""
    if not profile.is_intel or not profile.nested:
        return frozenset()
    return feature_set(profile.msrs)


def guest_features(profile: HostProfile, *, evmcs: bool = True, pv_perf_global_ctrl: bool = False) -> frozenset[str]:
    """Features an L1 guest reads (``-cpu host``); empty when eVMCS cannot be enabled on the host."""
    from qemu_evmcs.kvm.simkvm import guest_view
    try:
        return feature_set(guest_view(profile, evmcs=evmcs, pv_perf_global_ctrl=pv_perf_global_ctrl))
    except KvmError:
        return frozenset()


# =========================================================================== SQLite inventory

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
                files = _listing(root)
                if not files and not any(row[4] == root for row in known.values()):
                    # Never imported and nothing to import: say so rather than "0 hosts" and exit 0.
                    raise InputError("no host profiles found" + _subdir_hint([os.fspath(root)]),
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
                    try:
                        with open(f, "rb") as fh:
                            data = fh.read()
                    except OSError as err:
                        raise InputError(err.strerror or str(err), file=f) from None
                    sha = hashlib.sha256(data).hexdigest()
                    if old and old[2] == sha:
                        res.unchanged += 1
                        touch.append((st.st_mtime_ns, st.st_size, sha, new_pool, root, f))
                        continue
                    hosts = loader.add_text(FleetLoader._decode(data, f, 0), f)
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
