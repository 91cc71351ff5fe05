"""The fast fleet loader: 100,000 host profiles read in about half a second, each distinct document text parsed once.

Why: a fleet has few distinct hosts and many copies of each (see :mod:`qemu_evmcs.core.hostgroup`); what
remains proportional to the number of hosts is *reading* them, and PyYAML needs about 1 ms per document,
far too slow for 100,000. So:

Each YAML document's text is reduced to a *key*: the text with the host-specific top-level entries (``name``,
``notes``, ``provenance``) and column-0 comment lines cut out, each replaced by a marker that keeps its
position. Only the first document with a new key is parsed (libyaml's ``CSafeLoader`` when available, else
``SafeLoader``; both safe loaders) and validated in full; later documents with the same key only need their
name (a one-line regex) and, when present, a validity check of their ``notes``/``provenance`` value (regex,
else a tiny standalone safe parse). That first parse also proves the key sound: every cut region must be
exactly one top-level ``key: scalar`` entry, or a comment line outside every entry; otherwise (and for
anchors, aliases, directives, explicit ``...`` ends, or a missing or odd ``name``) documents are parsed in
full, one by one, exactly like :func:`qemu_evmcs.core.profile.iter_profiles`. A fleet lists a pool's hosts
together, so documents of one layout come in runs: after a few, the layout gets a compiled pattern, and the
documents of the run are matched with it instead of being cut (the run lane, :meth:`FleetLoader._fast_lane`).
Multi-document files are streamed in chunks; the 4 MiB limit of a profile applies per document, and lines
are counted only for an error. What stays in memory is the distinct profiles and, unless hosts go to a
``sink`` (``fleet import``), every host's name (the :class:`Fleet` itself).

Splitting the work over processes: :mod:`qemu_evmcs.fleet.parallel`; choosing between files, directories,
inventories and bundled names: :mod:`qemu_evmcs.fleet.sources`; the SQLite inventory:
:mod:`qemu_evmcs.fleet.inventory`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from qemu_evmcs.core.typecheck import TYPE_CHECKING

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.inputfile import open_regular
from qemu_evmcs.core.parsecache import cached_parse, yaml_id
from qemu_evmcs.core.hostgroup import Fleet
from qemu_evmcs.core.profile import (MAX_PROFILE_BYTES, PARSER_FILES, HostProfile, control_character, iter_documents,
                                     profile_from_mapping)
from qemu_evmcs.output.progress import Progress
from qemu_evmcs.core import lazy
from qemu_evmcs.core.regexcache import regex

if TYPE_CHECKING:
    import re
    from typing import BinaryIO
    import yaml
    from qemu_evmcs.core import yamlsafe
else:   # PyYAML is needed only for documents the parse cache lacks and odd notes (core/lazy.py)
    yaml = lazy.proxy("yaml")
    yamlsafe = lazy.proxy("qemu_evmcs.core.yamlsafe")
    re = lazy.proxy("re")   # only for the run lane's patterns, made from input (never the regex cache's)

#: Read multi-document files in pieces of this many bytes (memory stays flat for any file size).
CHUNK_BYTES = 8 * 1024 * 1024
#: Files shorter than this are read with one system call.
SMALL_FILE = 64 * 1024
#: Most document keys (texts without name, notes, provenance) remembered. Hosts of one profile that differ in
#: something the fingerprint ignores (the kernel point release) have keys of their own; past this many, a new
#: key's documents are parsed in full instead of cached, so a fleet of a million distinct texts costs time,
#: not memory (each key is about one document, ~1 KiB).
MAX_KEYS = 20_000
#: First documents sent through the per-user parse cache per loader (per run and loading process); the others
#: are parsed without it. A realistic fleet has tens to hundreds of distinct first documents, all cached; a
#: one-off import of a million distinct texts gains nothing from caching them, and writing them would push the
#: entries every command reads out of the bounded cache (:data:`~qemu_evmcs.core.parsecache.MAX_ENTRIES`, 4,096:
#: one run takes at most an eighth of it).
MAX_CACHED_FIRST = 512
#: A layout gets its run-lane pattern (:func:`_run_pattern`) once this many documents of it in a row took the
#: usual way: a text of a few hosts never imports ``re`` (about 8 ms) or compiles a pattern (about 0.15 ms).
RUN_MIN = 8
#: Layouts with more cut regions than this get no run-lane pattern (a pattern's compilation grows with its
#: groups: a document of 60,000 comment lines took seconds to compile); their documents take the usual way.
MAX_RUN_REGIONS = 64
#: At most this many layouts get a run-lane pattern per loader: each holds its compiled pattern, its long fixed
#: texts and its key (a few KiB), so a fleet of many distinct texts (up to :data:`MAX_KEYS`) costs time, not memory.
MAX_RUNS = 1024
#: Fixed texts longer than this are skipped by a run-lane pattern (an exact count of any characters, which the
#: engine does in one step) and compared in place instead (``startswith``, a memcmp).
LONG_TEXT = 48


# A region cut out of a document for its key: "\n" + a column-0 comment, or a top-level
# name/notes/provenance entry with its indented continuation lines.
# What follows "#" (the rest of the line) and what follows name/notes/provenance (the rest of the entry).
_COMMENT_REST = r"[^\n]*"
_ENTRY_REST = r"[ \t]*:(?=[ \t\n])[^\n]*(?:\n[ \t][^\n]*)*"
_CUT = regex(r"\n(#|name|notes|provenance)((?<=#)" + _COMMENT_REST + "|" + _ENTRY_REST + ")")
# A plain scalar YAML reads as a string (unless one of _YAML11_WORDS): a host name needing no quotes.
_PLAIN_SCALAR = r"[A-Za-z_][A-Za-z0-9_.@/+-]*"
_PLAIN_NAME = r"[ \t]*:[ \t]+(" + _PLAIN_SCALAR + r")[ \t]*"
# A cut region's rest in a run-lane pattern (_run_pattern), per kind. A name's is preceded by a look-ahead that
# captures the name when the entry is one line holding a plain scalar (what _NAME_FAST's first group takes).
_REST_GROUP = {"#": "(" + _COMMENT_REST + ")", "notes": "(" + _ENTRY_REST + ")",
               "name": "(?:(?=" + _PLAIN_NAME + r"(?:\n(?![ \t])|\Z))|)(" + _ENTRY_REST + ")"}
_REST_GROUP["provenance"] = _REST_GROUP["notes"]
# What a run-lane pattern takes after a document: a plain "---" line followed by a line that is not one.
_PLAIN_SEP = r"(\n---(?=\n)(?!\n---))?"
# Segments holding any of these are parsed in full (explicit document end, directives, "--- x").
_ODD = regex(r"\n(?:\.\.\.|%|---[^\n])")
# A segment that starts, after blank and comment lines, with another document marker, a directive or a
# document end: the "---" line before it (taken by the split) started an empty document.
_EMPTY_FIRST = regex(r"(?:[ \t]*(?:#[^\n]*)?\n)*(?:%|(?:---|\.\.\.)(?![^ \t\n]))")
_YAML11_WORDS = frozenset(["yes", "no", "true", "false", "on", "off", "null", "y", "n"])
_NAME_FAST = regex(
    r"[ \t]*:[ \t]+(?:(" + _PLAIN_SCALAR + r")|'([^'\n]*)'|\"([^\"\\\n]*)\")[ \t]*(?:[ \t]#[^\n]*)?")
_TEXT_FAST = regex(r"[ \t]*:(?:[ \t]+(?:'[^'\n]*'|\"[^\"\\\n]*\"))?[ \t]*")
# The top-level name key of a document (where a duplicate name is reported).
_NAME_KEY = regex(r"(?m)^name[ \t]*:")
_UNSAFE = ""  # key cache value: "parse every document with this key in full"

#: A trusted key's layout (:meth:`FleetLoader._layout`): the fingerprint, the index of the name among the
#: document's cut regions, and the (index, kind) of its notes/provenance regions.
Layout = tuple[str, int, tuple[tuple[int, str], ...]]


class RunPattern:
    """The run lane's view of one layout (:func:`_run_pattern`). (A plain class: ``typing.NamedTuple`` would
    import ``typing`` at every start, 40 million instructions.)"""

    __slots__ = ("match", "longs", "rests", "name", "plain", "texts", "sep")

    def __init__(self, match: Callable[[str, int], re.Match[str] | None], longs: tuple[tuple[int, str], ...],
                 rests: tuple[int, ...], name: int, plain: int, texts: tuple[tuple[int, str], ...], sep: int) -> None:
        self.match = match     #: matches a document of the layout at a position
        self.longs = longs     #: skipped fixed texts, each with the group after whose end it starts
        self.rests = rests     #: the group of each cut region's rest, in order (tests compare them with the split)
        self.name = name       #: the group of the name's rest (likewise)
        self.plain = plain     #: the group of the name when it is a plain one-line scalar (else unmatched)
        self.texts = texts     #: (group, kind) of each notes/provenance rest
        self.sep = sep         #: the group of a plain "---" line after the document


def _in_file(err: InputError, path: str, offset: int) -> InputError:
    """``err``, whose line was counted from byte ``offset`` of ``path``, with the line of the file (or none
    when the file can no longer be read to count it)."""
    if err.line is not None and offset:
        before = _lines_before(path, offset)
        err.line = None if before is None else err.line + before
    return err


def _lines_before(path: str, offset: int) -> int | None:
    """How many lines of ``path`` end before byte ``offset`` (``None``: the file cannot be read)."""
    n = 0
    try:
        with open(path, "rb") as fh:
            while offset > 0:
                block = fh.read(min(CHUNK_BYTES, offset))
                if not block:
                    break
                n += block.count(b"\n")
                offset -= len(block)
    except OSError:
        return None
    return n


def _shift(err: InputError, offset: int) -> InputError:
    """``err`` with its line counted from the file, not from the document cut out of it at line ``offset``.

    Only an error without a key (a YAML error: its mark is the document's) is shifted; one with a key comes
    from :func:`~qemu_evmcs.core.profile.profile_from_mapping`, which was given file lines already.
    """
    if err.key is None and err.line is not None and offset:
        err.line += offset
    return err


class FleetLoader:
    """Streaming loader that parses each distinct document text once.

    Feed it with :meth:`add_file` or :meth:`add_text`; the result accumulates
    in :attr:`fleet`. Host names must be unique across everything fed to one loader.

    :ivar parsed: how many documents were parsed in full (the rest took the fast path).
    :ivar fast_lane: how many of those on the fast path took its loop over a text's documents (:meth:`_fast_lane`).
    :ivar run_lane: how many of those the run lane took (one match, no split).
    """

    def __init__(self, fleet: Fleet | None = None, progress: Progress | None = None,
                 sink: Callable[[list[tuple[str, str]]], None] | None = None) -> None:
        self.fleet = fleet if fleet is not None else Fleet()
        self.progress = progress
        self._keys: dict[str, str] = {}          # key text -> fingerprint, or _UNSAFE
        self._layouts: dict[str, Layout] = {}    # trusted key -> see _layout
        self._runs: dict[str, RunPattern] = {}   # trusted key -> its run-lane pattern (from RUN_MIN in a row)
        self._text_ok: set[str] = set()          # notes/provenance blocks known to hold a string
        self._where: dict[str, str] = {}         # host name -> file (duplicate detection)
        self.parsed = 0
        self.documents = 0
        self.fast_lane = 0
        self.run_lane = 0
        self._cached_first = 0                   # first documents sent through the parse cache (MAX_CACHED_FIRST)
        #: Return ``(host, fingerprint)`` per document from the ``add_*`` methods (the inventory needs them;
        #: :func:`~qemu_evmcs.fleet.sources.load_fleet` reads only :attr:`fleet` and turns it off).
        self.collect = True
        #: Streaming mode (``fleet import``): every ``(host, fingerprint)`` goes to ``sink`` a chunk at a time
        #: and nothing per host is kept (no :attr:`Fleet.members`, no duplicate-name table: the caller's
        #: store refuses duplicates), so memory is bounded by the distinct profiles, not the file.
        self.sink = sink
        self._track = sink is None

    # ------------------------------------------------------------------ entry points
    def add_file(self, path: str, start: int = 0, end: int | None = None) -> list[tuple[str, str]]:
        """One file (multi-document allowed), streamed in chunks that end on a ``---`` line. Returns
        ``[(host, fingerprint)]`` added. (Directories: :func:`~qemu_evmcs.core.profilewalk.profile_files` lists
        their files, :mod:`~qemu_evmcs.fleet.sources` feeds them here.)

        ``start``/``end``: only this byte range (``start`` on a ``---`` line or 0, ``end`` exclusive, ``None``:
        to the end of the file).

        Lines are counted only for an error's line number (:meth:`_chunk`): counting every line of a large
        fleet was an eighth of its load.
        """
        fh = open_regular(path)  # a FIFO, /dev/zero or a symlink to them: refused, never read "until EOF"
        try:
            if start == 0 and end is None:
                # Small files (the one-host-per-file layout) in one read; large ones streamed.
                data = fh.read(SMALL_FILE)
                if len(data) < SMALL_FILE:
                    if self.progress is not None:
                        self.progress.update(len(data))
                    return self._deliver([], self.add_text(self._decode(data, path, 0), path) if data else [])
            fh.seek(start)
            return self._stream(fh, path, None if end is None else end - start, start)
        except OSError as err:
            raise InputError(err.strerror or str(err), file=path) from None
        finally:
            fh.close()

    def _stream(self, fh: BinaryIO, path: str, limit: int | None = None, consumed: int = 0) -> list[tuple[str, str]]:
        """Chunks of ``path`` from byte ``consumed`` (``fh`` is there), at most ``limit`` bytes."""
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
                    self._deliver(out, self._chunk(buf, path, consumed))
                    if self.progress is not None:
                        self.progress.update(len(buf))
                return out
            cut = buf.rfind(b"\n---\n")
            if cut < 0:
                if len(buf) > MAX_PROFILE_BYTES:  # memory stays below one chunk + one document
                    # (the line: the document's first, as where the whole document was read)
                    err = InputError(f"document is over {MAX_PROFILE_BYTES} bytes; host profiles are limited "
                                     f"to {MAX_PROFILE_BYTES}", file=path, line=1 + buf.startswith(b"---\n"))
                    raise _in_file(err, path, consumed)
                carry = buf
                continue
            head, carry = buf[:cut + 1], buf[cut + 1:]
            self._deliver(out, self._chunk(head, path, consumed))
            consumed += len(head)
            if self.progress is not None:
                self.progress.update(len(head))

    def _chunk(self, data: bytes, path: str, offset: int) -> list[tuple[str, str]]:
        """:meth:`add_text` of the bytes at ``offset`` of ``path``; an error's line, counted from the chunk, is
        made the file's here, by counting the lines before the chunk then."""
        try:
            return self.add_text(self._decode(data, path, offset), path)
        except InputError as err:
            raise _in_file(err, path, offset) from None

    def _deliver(self, out: list[tuple[str, str]], got: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Hand one chunk's hosts to :attr:`sink`, or add them to ``out`` (returned)."""
        if self.sink is None:
            out += got
        elif got:
            self.sink(got)
        return out

    @staticmethod
    def _decode(data: bytes, path: str, base: int) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputError(f"not UTF-8 text ({err.reason} at byte {base + err.start})", file=path) from None

    def add_text(self, text: str, path: str, line0: int = 0) -> list[tuple[str, str]]:
        """Every document of ``text`` (which starts at 0-based line ``line0`` of ``path``)."""
        # Split on lines that are exactly "---"; the leading "\n" lets a first "---" line split too.
        return self._fast_lane("\n" + text, path, line0)

    def _general(self, text: str, path: str, line0: int) -> list[tuple[str, str]]:
        """:meth:`add_text` for any text: directives, explicit document ends, ``--- x`` lines, empty documents."""
        out: list[tuple[str, str]] = []
        segments = ("\n" + text).split("\n---\n")
        pending = ""
        pending_line = 0
        pending_explicit = False
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
            explicit = i > 0
            if pending:
                seg = pending + "\n---\n" + seg
                seg_line = pending_line
                explicit = pending_explicit      # (the segment starts with the directives, where they were)
                pending = ""
            if directives and ("\n" + seg).find("\n%") >= 0 and not self._has_content_after_directive(seg):
                # Directives belong to the next document: parse them together.
                pending, pending_line, pending_explicit = seg, seg_line, explicit
                continue
            out += self._generic(seg, path, seg_line, explicit)
        if pending:
            out += self._slow(pending, path, pending_line)
        return out

    def _generic(self, seg: str, path: str, seg_line: int, explicit: bool) -> list[tuple[str, str]]:
        """One document's text; ``explicit``: it followed a ``---`` line (so even an empty one is a null document)."""
        if len(seg) > MAX_PROFILE_BYTES:
            raise InputError(f"document is {len(seg)} bytes; host profiles are limited to {MAX_PROFILE_BYTES}",
                             file=path, line=seg_line + 1)
        if explicit and _EMPTY_FIRST.match(seg):
            # The "---" line before this segment started a document that ends before any content: the
            # split took that line, so it is put back for the parse to see (and refuse) that empty document.
            return self._slow("---\n" + seg, path, seg_line - 1)
        if seg.strip():
            return self._segment(seg, path, seg_line, explicit)
        if explicit:
            return self._slow("---\n" + seg, path, seg_line - 1)
        return []

    def _fast_lane(self, t: str, path: str, line0: int) -> list[tuple[str, str]]:
        """:meth:`add_text`, up to the text's first document marker that is not a plain ``---`` line (the rest goes
        to :meth:`_general`); a text of one document without ``---`` (the one-host-per-file layout) included.

        ``t`` is the text with a ``"\\n"`` in front; its documents are the pieces between ``"\\n---"`` (each
        starts with the ``"\\n"`` that ends the line before it). This loop is most of the cost of loading a
        large fleet, so it avoids per-document work that can be done per group or per run:

        - The text is not searched for odd markers first (``%`` directives, ``...`` ends, ``--- x`` lines,
          empty documents): a document the run lane accepts has none (its fixed texts come from a document
          checked on the usual way, its cut regions are lines of their own), so only documents on the usual
          way are searched, and what follows each ``---`` is checked where the next document starts.
        - Documents of one group come in runs. After :data:`RUN_MIN` documents of one trusted layout in a row,
          the next ones go through the **run lane**, a loop of its own: one match per document against that
          layout (:func:`_run_pattern`), which scans only its cut regions and short fixed texts (the long ones
          are compared in place) and also takes the name and the ``---`` line after it. No copy of the
          document, no split, no key. A document it does not take (the text's last, one before an odd
          marker, another layout, a name taken already, ...) takes the usual way.
        - The usual way: one C-level split on the cut regions, the key, and a dict look-up (spared when the
          key equals the previous one: a memcmp instead of hashing ~1 KB).
        - Lines are counted only for an error in a document that takes the full treatment; consecutive
          documents of one group reuse their member list.
        """
        out: list[tuple[str, str]] = []
        n = len(t)
        layouts = self._layouts
        text_ok = self._text_ok
        cut_split = _CUT.split
        name_match = _NAME_FAST.fullmatch
        words = _YAML11_WORDS
        where = self._where
        members = self.fleet.members
        collect = self.collect
        track = self._track
        add = out.append
        startswith = t.startswith
        match_run = _match_run
        runs = self._runs
        fast = lane = 0
        last_fp = ""
        last_key = "\x02"             # (no key starts so: the first document is looked up)
        last_entry: Layout = ("", 0, ())
        entry: Layout | None
        group: list[str] = []
        run: RunPattern | None = None
        run_entry: Layout | None = None   # the layout of run
        run_fp = ""                     # its fingerprint
        streak = 0                      # documents of last_entry in a row on the usual way
        a = 0                           # the document starts at t[a]
        name: str | None
        while True:
            name = None
            if run is not None:
                # The run lane (see above). It takes this document only in the common case: its test for a
                # free name is the usual way's, and a name it leaves undecided (quoted, a YAML 1.1 word) or
                # taken, like notes not yet known to be strings, leaves the document to the usual way.
                m = match_run(t, a, run)
                if m is not None and m.lastindex == run.sep and m.end() - 4 - a <= MAX_PROFILE_BYTES:
                    name = m[run.plain]
                    if name is not None and (name.lower() in words or (track and name in where)):
                        name = None
                    for g, _ in run.texts:
                        if name is not None and m[g] not in text_ok:
                            name = None
            if name is not None:
                assert m is not None
                fp = run_fp
                nxt = m.end()
                lane += 1
            else:
                b = t.find("\n---", a)
                end = n if b < 0 else b
                nxt = -1 if b < 0 else b + 4
                seg = t[a:end]
                odd = _ODD.search(seg) is not None     # this document holds a directive or "..."
                if seg[-1:] == "\n":
                    seg = seg[:-1]            # (a document's last line break: same key as the others)
                entry = None
                if len(seg) <= MAX_PROFILE_BYTES:
                    parts = cut_split(seg)
                    key = "\x00".join(parts[0::3]) + "\x01" + "|".join(parts[1::3])
                    # Comparing with the previous key (a memcmp) spares hashing each new key for the dict.
                    if key == last_key:
                        entry = last_entry
                        streak += 1
                    else:
                        streak = 1
                        entry = layouts.get(key)
                        if entry is None:
                            entry = self._layout(key)
                        if entry is not None:     # (an unknown key may become trusted by its first document)
                            last_key, last_entry = key, entry
                if odd or nxt > 0 and (not startswith("\n", nxt) or startswith("\n---", nxt)):
                    # This document holds a directive or "...", or the "---" after it is odd: "--- x", a "---"
                    # ending the text, or an empty document ("---" twice), which the general way reads with
                    # this document. This document and the rest of the text take the general way, which reads
                    # them as it would have read them in the whole text (every "---" before them is plain).
                    try:
                        out += self._general(t[a - 3:] if a else t[1:], path, 0)
                    except InputError as err:
                        if err.line is not None:   # (lines before its "---" line, the added "\n" not counted)
                            err.line += line0 + (t.count("\n", 0, a - 3) - 1 if a else 0)
                        raise
                    break
                if entry is not None:
                    fp, ni, tix = entry
                    blocks = parts[2::3]
                    if entry is not run_entry:
                        got_run = runs.get(key)
                        if (got_run is None and streak >= RUN_MIN and len(parts) <= 3 * MAX_RUN_REGIONS + 1
                                and len(runs) < MAX_RUNS):
                            got_run = runs[key] = _run_pattern(parts)
                        if got_run is not None:
                            run, run_entry, run_fp = got_run, entry, fp
                    # The name: a plain scalar that YAML 1.1 reads as a string (the common case), else quoted.
                    nm = name_match(blocks[ni])
                    name = nm[1] if nm is not None else None
                    if name is None or name.lower() in words:
                        name = self._fast_name(blocks[ni])
                    if name is not None and track and name in where:
                        name = None
                    for j, kind in tix:
                        if name is not None and blocks[j] not in text_ok and not self._text_block_ok(kind, blocks[j]):
                            name = None
                if name is None:
                    # The full treatment (first of its kind, odd name, duplicate, ...); its lines are counted
                    # from the document, and made the text's only for an error (every line number is the first
                    # line's plus one counted in the document).
                    last_fp = ""              # the full treatment may have created or extended any group
                    seg = t[a + 1:end]
                    try:
                        out += self._generic(seg[:-1] if seg[-1:] == "\n" else seg, path, 0, a > 0)
                    except InputError as err:
                        if err.line is not None:
                            err.line += line0 + t.count("\n", 0, a + 1) - 1
                        raise
                    if nxt < 0:
                        break
                    a = nxt
                    continue
                fast += 1
            # A document taken, by either way.
            if track:
                where[name] = path
                if fp != last_fp:
                    got = members.get(fp)
                    if got is None:
                        got = members[fp] = []
                    group, last_fp = got, fp
                group.append(name)
            if collect:
                add((name, fp))
            if nxt < 0:
                break
            a = nxt
        self.documents += fast + lane
        self.fast_lane += fast + lane
        self.run_lane += lane
        return out

    def _layout(self, key: str) -> Layout | None:
        """For a trusted key: (fingerprint, index of the name block, indexes and kinds of notes/provenance blocks)."""
        fp = self._keys.get(key)
        if not fp:
            return None
        kinds = key.rsplit("\x01", 1)[1].split("|")
        tix = tuple((k, kind) for k, kind in enumerate(kinds) if kind in ("notes", "provenance"))
        entry = (fp, kinds.index("name"), tix)
        self._layouts[key] = entry
        return entry

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
        # A control character (raw ESC, CR, U+2028...) sends the document to the full parse, which refuses it.
        return name if name and name.strip() and control_character(name) is None else None

    def _text_block_ok(self, kind: str, block: str) -> bool:
        """Is this ``notes``/``provenance`` entry a string (or null) on its own?"""
        if _TEXT_FAST.fullmatch(block) is None:
            if "&" in block or "*" in block:
                return False
            try:
                safe_loader = yamlsafe.BoundedCSafeLoader  # libyaml's CSafeLoader when present, integers bounded
                data = yaml.load(kind + block, Loader=safe_loader)
            except yaml.YAMLError:
                return False
            if not (isinstance(data, dict) and list(data) == [kind] and isinstance(data[kind], (str, type(None)))):
                return False
        if len(self._text_ok) < 100_000:
            self._text_ok.add(block)
        return True

    def _member(self, name: str, fp: str, path: str, seg: str, line0: int) -> None:
        if not self._track:
            return
        other = self._where.get(name)
        if other is not None:
            m = _NAME_KEY.search(seg)
            line = line0 + seg.count("\n", 0, m.start()) + 1 if m else None
            raise InputError(f"duplicate host name {name!r} (also in {other})", file=path, key="name", line=line)
        self._where[name] = path
        self.fleet.members.setdefault(fp, []).append(name)

    def _first(self, seg: str, path: str, line0: int, key: str) -> list[tuple[str, str]]:
        """Parse a document with a new key in full; record whether the key may be trusted.

        Parsing and validation are exactly :func:`~qemu_evmcs.core.profile.iter_documents` +
        :func:`~qemu_evmcs.core.profile.profile_from_mapping`; the (fast, C) composer is used only afterwards,
        on the text, to check that the key's cuts are sound. The parse and that check are pure functions of
        the text, so they go through the per-user parse cache (:mod:`~qemu_evmcs.core.parsecache`; at 100,000
        hosts these first documents were ~15% of a load): a fleet read again costs no YAML parse; validation
        (:func:`~qemu_evmcs.core.profile.profile_from_mapping`) runs every time. Only the first
        :data:`MAX_CACHED_FIRST` of a run: past those, a fleet of many distinct texts is parsed uncached.
        """
        try:
            if self._cached_first < MAX_CACHED_FIRST:
                self._cached_first += 1
                docs, sound = cached_parse(seg, functools.partial(_parse_first, path=path), parser="fleet-first",
                                           parser_files=_FIRST_PARSER_FILES, yaml_version=yaml_id())
            else:
                docs, sound = _parse_first(seg, path)
        except InputError as err:
            raise _shift(err, line0) from None
        out = self._slow(seg, path, line0, docs)
        if len(self._keys) < MAX_KEYS:   # else not remembered: the next document with this key is parsed too
            self._keys[key] = out[0][1] if len(out) == 1 and sound else _UNSAFE
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
        # Cut regions, entries and quoted scalars all come in document order, so one pass over each decides
        # (a document of many comment lines, or entries, costs its length, not its length squared).
        s2 = "\n" + seg
        line = pos = 0                 # s2's newlines before pos
        si = qi = 0                    # the first entry / quoted scalar that may still matter
        for m in _CUT.finditer(s2):
            line += s2.count("\n", pos, m.start())
            pos = m.start()
            first = line
            last = first + m.group(0).count("\n") - 1
            kind = m.group(1)
            if kind == "#":             # a comment line must not be inside a multi-line quoted scalar
                while qi < len(quoted) and quoted[qi][1] < first:
                    qi += 1
                if qi < len(quoted) and quoted[qi][0] < first:
                    return False
                continue
            # Exactly one entry starts on the region's first line: this kind's, with a scalar value that ends
            # within the region, and no other entry starts inside the region.
            while si < len(spans) and spans[si][1] < first:
                si += 1
            if si == len(spans) or spans[si][1] != first:
                return False
            key, _, end, scalar = spans[si]
            if key != kind or not scalar or end > last:
                return False
            if si + 1 < len(spans) and spans[si + 1][1] <= last:
                return False
        return True

    def _slow(self, seg: str, path: str, line0: int,
              docs: Iterable[tuple[object, dict[str, int]]] | None = None) -> list[tuple[str, str]]:
        """Parse every document of ``seg`` in full (what :func:`iter_profiles` does); ``docs``: already parsed."""
        out: list[tuple[str, str]] = []
        try:
            for data, lines in (iter_documents(seg, path) if docs is None else docs):
                self.parsed += 1
                prof = profile_from_mapping(data, file=path, lines={k: v + line0 for k, v in lines.items()})
                fp = self._adopt(prof)
                self._member(prof.name, fp, path, seg, line0)
                out.append((prof.name, fp))
        except InputError as err:
            raise _shift(err, line0) from None
        return out


def _run_pattern(parts: list[str]) -> RunPattern:
    """The run lane's pattern for the layout of a document split on its cut regions (``parts``, from ``_CUT.split``):
    its fixed texts in order, each cut region's kind word, the rest of each region as a group, and an optional
    plain ``---`` line after it.

    Why it finds exactly what ``_CUT.split`` would, in a document it matches: a fixed text came out of such a
    split, so it holds no cut region, and what precedes or follows it is the same in both documents where it
    matters: a region starts with ``"\\n"`` and ends before one (or at the end), so no region can start in a
    fixed text and end in a rest, and a rest ends where the split's greedy pattern ends it (a fixed text after
    a name/notes/provenance entry does not start with an indented line, or the split would have taken it into
    the entry). Nor can the engine backtrack into a shorter rest: what follows a rest always starts with
    ``"\\n"`` and a character that is not a blank.

    Fixed texts longer than :data:`LONG_TEXT` are skipped (``(?s:.{n})``: one step for the engine) and returned
    with the group after which each starts, for :func:`_match_run` to compare in place. The name and the
    ``---`` line after the document are taken here too, so a document on the run lane costs one match.
    """
    texts, kinds = parts[0::3], parts[1::3]
    source: list[str] = []
    longs: list[tuple[int, str]] = []
    rests: list[int] = []
    name = plain = 0
    group = 0                            # groups so far
    for k, text in enumerate(texts):
        if len(text) > LONG_TEXT:
            source.append(f"(?s:.{{{len(text)}}})")
            longs.append((group, text))
        else:
            source.append(re.escape(text))
        if k < len(kinds):
            kind = kinds[k]
            source.append(re.escape("\n" + kind) + _REST_GROUP[kind])
            if kind == "name":
                plain, name = group + 1, group + 2
            group += 2 if kind == "name" else 1
            rests.append(group)
    source.append(_PLAIN_SEP)
    tix = tuple((rests[k], kind) for k, kind in enumerate(kinds) if kind in ("notes", "provenance"))
    return RunPattern(re.compile("".join(source)).match, tuple(longs), tuple(rests), name, plain, tix, group + 1)


def _match_run(t: str, a: int, run: RunPattern) -> re.Match[str] | None:
    """The document of ``t`` at ``a`` in the layout of ``run`` (:func:`_run_pattern`), with a plain ``---`` line
    after it if there is one, or ``None`` if it has another layout. Whatever else follows it is the caller's to
    check."""
    m = run.match(t, a)
    if m is None:
        return None
    for g, text in run.longs:
        if not t.startswith(text, m.end(g) if g else a):
            return None
    return m


def _parse_first(seg: str, path: str) -> tuple[list[tuple[object, dict[str, int]]], bool]:
    """A first document's parse (what :meth:`FleetLoader._slow` would parse) and whether the cuts of its key
    are sound (:meth:`FleetLoader._sound`, checked only for a text holding exactly one document)."""
    docs = list(iter_documents(seg, path))
    if len(docs) != 1:
        return docs, False
    try:
        safe_loader = yamlsafe.BoundedCSafeLoader
        node = yaml.compose(seg, Loader=safe_loader)
    except (yaml.YAMLError, RecursionError):  # pragma: no cover - the text was just parsed
        return docs, False
    return docs, node is not None and FleetLoader._sound(seg, node)


#: The code behind :func:`_parse_first`'s answer: a change in any of them is a new parse-cache key.
_FIRST_PARSER_FILES = (__file__, *PARSER_FILES)


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
