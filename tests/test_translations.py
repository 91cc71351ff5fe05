"""argparse's words through ``cli/translations.py``: what ``gettext`` itself answers, with or without catalogs.

Each case runs in a fresh interpreter whose ``sys.base_prefix`` is moved to a temporary directory before the
package is imported: that is where ``gettext`` looks for the catalogs of argparse's domain
(``<prefix>/share/locale/<language>/LC_MESSAGES/messages.mo``), and where the stand-in looks for them too.
The reference is the real ``gettext`` module reading a catalog written here by hand in the GNU ``.mo``
format, and the output of argparse with the real ``gettext`` imported before the package (then the stand-in
only passes the calls on).
"""

from __future__ import annotations

import ast
import struct
import subprocess
from pathlib import Path

from fresh_python import fresh_python

#: Runs ``qemu-evmcs ARGV`` (its help goes to stdout) with the base prefix moved, then reports on stderr.
_PROBE = r'''
import sys, io, contextlib
sys.base_prefix = sys.argv[1]
if sys.argv[2] == "real-first":
    import gettext
import qemu_evmcs.cli.main as m
from qemu_evmcs.cli.translations import GETTEXT
out, err = io.StringIO(), io.StringIO()
try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = m.run(sys.argv[3:])
except SystemExit as exc:
    rc = exc.code
plural = [GETTEXT.ngettext("one file", "%d files", n) for n in (1, 2)]
sys.stderr.write(repr((rc, out.getvalue() + err.getvalue(), plural,
                       sorted(n for n in ("gettext", "locale", "re", "enum") if n in sys.modules))))
'''

#: The catalog: argparse's words in a made-up language "xx" (msgid -> msgstr).
_CATALOG = {"options": "Optionen", "show this help message and exit": "diese Hilfe zeigen und beenden",
            "usage: ": "Aufruf: "}


def _write_mo(path: Path, messages: dict[str, str]) -> None:
    """A GNU message catalog: magic, revision 0, the count, the offsets of the two tables of (length, offset)
    pairs, an empty hash table, then the NUL-terminated strings; the header entry ("") names the charset."""
    entries = sorted({"": "Content-Type: text/plain; charset=UTF-8\n", **messages}.items())
    ids = [k.encode() for k, _ in entries]
    strs = [v.encode() for _, v in entries]
    n = len(entries)
    start = 7 * 4 + 16 * n
    table_ids, table_strs, blob = [], [], b""
    for s in ids:
        table_ids.append((len(s), start + len(blob)))
        blob += s + b"\0"
    for s in strs:
        table_strs.append((len(s), start + len(blob)))
        blob += s + b"\0"
    header = struct.pack("<7I", 0x950412DE, 0, n, 7 * 4, 7 * 4 + 8 * n, 0, 0)
    pairs = b"".join(struct.pack("<2I", *p) for p in table_ids + table_strs)
    path.parent.mkdir(parents=True)
    path.write_bytes(header + pairs + blob)


def _probe(prefix: Path, mode: str, *argv: str, language: str = "xx") -> tuple[int, str, list[str], list[str]]:
    """(exit code, what it printed on stdout and stderr, the stand-in's ngettext for 1 and 2, which of gettext,
    locale, re and enum were imported) of ``qemu-evmcs ARGV`` under ``prefix``, the real gettext imported
    first when ``mode`` is ``real-first``."""
    python, env = fresh_python({"LANGUAGE": language, "LC_ALL": "", "LC_MESSAGES": "", "LANG": "C.UTF-8"})
    out = subprocess.run([*python, "-c", _PROBE, str(prefix), mode, *argv], capture_output=True, text=True,
                         timeout=120, env=env, check=True)
    rc, text, plural, imported = ast.literal_eval(out.stderr)
    return int(rc), str(text), list(plural), list(imported)


def test_without_a_catalog_directory_neither_gettext_nor_locale_is_imported(tmp_path: Path) -> None:
    """No ``share/locale`` under the prefix: every look-up is the message itself, as the real gettext says
    (it is imported first in the reference run), and neither gettext nor locale is loaded."""
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    for argv in (["negotiate", "--help"], ["negotiate", "--bogus"], ["--help"],
                 ["guest-msrs", "--host", "skylake-6.3"]):
        rc, text, plural, imported = _probe(prefix, "stand-in", *argv)
        assert (rc, text, plural) == _probe(prefix, "real-first", *argv)[:3], argv
        assert {"gettext", "locale"} & set(imported) == set(), argv    # (a help text imports re: textwrap)
    assert plural == ["one file", "%d files"]
    assert "show this help message and exit" in _probe(prefix, "stand-in", "negotiate", "--help")[1]
    assert "the following arguments are required: --model" in _probe(prefix, "stand-in", "negotiate")[1]


def test_with_a_catalog_argparse_speaks_its_language(tmp_path: Path) -> None:
    """A catalog of the user's language under the prefix: argparse's words come translated, exactly as with the
    real gettext imported first; the catalog itself is checked with the real gettext."""
    prefix = tmp_path / "prefix"
    _write_mo(prefix / "share" / "locale" / "xx" / "LC_MESSAGES" / "messages.mo", _CATALOG)
    import gettext     # the reference reader of the hand-written catalog (imported here only: it imports re)
    t = gettext.translation("messages", str(prefix / "share" / "locale"), ["xx"])
    assert [t.gettext(k) for k in _CATALOG] == list(_CATALOG.values())
    rc, out, _, imported = _probe(prefix, "stand-in", "negotiate", "--help")
    assert (rc, out) == _probe(prefix, "real-first", "negotiate", "--help")[:2] and rc == 0
    assert out.startswith("Aufruf: qemu-evmcs negotiate")
    assert "Optionen:" in out and "diese Hilfe zeigen und beenden" in out
    assert {"gettext", "locale"} <= set(imported)      # asked, so imported
    # Another language finds no catalog there: the words stay English, as the real gettext leaves them.
    other = _probe(prefix, "stand-in", "negotiate", "--help", language="yy")[1]
    assert other == _probe(prefix, "real-first", "negotiate", "--help", language="yy")[1]
    assert other.startswith("usage: qemu-evmcs negotiate")
