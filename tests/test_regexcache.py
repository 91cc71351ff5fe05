"""``core/regexcache.py``: a pattern built from the cache is the one ``re.compile`` makes.

``re`` pattern objects compare equal when their pattern, flags and compiled program are the same, so each
module-level pattern of the package, as the package built it, is compared with ``re.compile`` of its text and
flags in the same interpreter: first with an empty cache (the patterns are compiled and recorded), then in a
fresh interpreter that builds them from the cache (a counter says how many).
"""

from __future__ import annotations

import ast
import json
import marshal
import re
import subprocess
import textwrap
from pathlib import Path

from fresh_python import fresh_python

ROOT = Path(__file__).resolve().parent.parent

_PROBE = r'''
import importlib, json, pkgutil, re
import qemu_evmcs
from qemu_evmcs.core import regexcache
found = {}
seen = set()   # a pattern imported by another module is listed once, where it is first found
for info in pkgutil.walk_packages(qemu_evmcs.__path__, "qemu_evmcs."):
    if info.name.endswith("__main__"):
        continue
    mod = importlib.import_module(info.name)
    for name, obj in vars(mod).items():
        if isinstance(obj, re.Pattern) and not name.startswith("__") and id(obj) not in seen:
            seen.add(id(obj))
            found[f"{info.name}.{name}"] = [obj == re.compile(obj.pattern, obj.flags), obj.pattern, obj.flags,
                                            obj.groups, sorted(obj.groupindex.items())]
print(json.dumps({"served": regexcache.served, "patterns": found}))
'''


def _run(cache: str) -> dict[str, object]:
    python, env = fresh_python({"QEMU_EVMCS_CACHE_DIR": cache})
    out = subprocess.run([*python, "-c", _PROBE], capture_output=True, text=True, timeout=300, env=env, check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_every_package_pattern_built_from_the_cache_is_re_compiles(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    first, second = _run(str(cache)), _run(str(cache))
    patterns = first["patterns"]
    assert isinstance(patterns, dict) and len(patterns) >= 25, patterns
    assert first["served"] == 0
    assert second["served"] == len(patterns)
    assert second["patterns"] == patterns
    assert all(equal for equal, *_ in patterns.values()), [k for k, v in patterns.items() if not v[0]]
    # Hand-checked against the source: the release pattern has three groups, the vmxcap one none named.
    assert patterns["qemu_evmcs.core.kernel._RELEASE"][3] == 3
    assert patterns["qemu_evmcs.hostio.rdmsr._PLAIN"][4] == [["key", 1], ["val", 2]]


def test_a_damaged_entry_is_ignored_and_rewritten(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    _run(str(cache))
    entries = [p for p in cache.iterdir() if p.name.startswith("regex-")]
    assert len(entries) == 1
    entries[0].write_bytes(b"\x00garbage" * 100)
    again = _run(str(cache))
    assert again["served"] == 0
    patterns = again["patterns"]
    assert isinstance(patterns, dict) and all(v[0] for v in patterns.values())
    assert _run(str(cache))["served"] == len(patterns)


def test_with_the_cache_off_patterns_are_compiled_as_usual() -> None:
    off = _run("off")
    assert off["served"] == 0
    patterns = off["patterns"]
    assert isinstance(patterns, dict) and all(v[0] for v in patterns.values())


def test_pattern_equality_compares_the_program() -> None:
    """What the checks above rely on: equal text and flags but another program would compare unequal."""
    assert re.compile("a+") == re.compile("a+")
    assert re.compile("a+") != re.compile("a+", re.IGNORECASE)
    assert re.compile("a+") != re.compile("a*")


def test_a_stored_program_that_sre_refuses_is_compiled_again_and_replaced(tmp_path: Path) -> None:
    """An entry that unmarshals but holds a program ``_sre`` refuses (damage that keeps the layout) costs
    only the compilation: every pattern still equals ``re.compile``'s, and the next start is served again."""
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    first = _run(str(cache))
    [entry] = [p for p in cache.iterdir() if p.name.startswith("regex-")]
    version, known, flag_values, escapes = marshal.loads(entry.read_bytes())
    key = next(iter(known))
    flags, program, groups, groupindex, indexgroup = known[key]
    known[key] = (flags, [255] * len(program), groups, groupindex, indexgroup)   # not an SRE program
    entry.write_bytes(marshal.dumps((version, known, flag_values, escapes)))
    entry.chmod(0o600)
    again = _run(str(cache))
    patterns = again["patterns"]
    assert isinstance(patterns, dict) and all(v[0] for v in patterns.values())
    assert again["served"] == len(patterns) - 1
    assert _run(str(cache))["served"] == len(patterns) == len(first["patterns"])  # type: ignore[arg-type]


#: The standard library's patterns every start compiles, taken in a fresh interpreter after the CLI's start-up
#: imports (and an argparse parser built and used), before anything imports ``re``; then ``re`` is imported and
#: each is compared with ``re.compile`` of its text and flags. Printed as a Python literal: json imports re.
_STDLIB_PROBE = r'''
import sys
import qemu_evmcs.cli.main as m
import qemu_evmcs.cli.commands.explain
from qemu_evmcs.cli.translations import real_gettext
gettext = real_gettext()    # (where a catalog can exist: cli/translations.py; imports locale first)
import argparse, dataclasses, locale, textwrap
p = m.build_parser(only="guest-msrs")
p.parse_args(["guest-msrs", "--host", "skylake-6.3", "--kernel", "6.1"])
f = argparse.HelpFormatter("x", width=80)   # with a width: without one it imports shutil
tw = textwrap.TextWrapper
stand_in = argparse._re
got = {"dataclasses": dataclasses._MODULE_IDENTIFIER_RE, "gettext": gettext._token_pattern,
       "locale": locale._percent_re, "wordsep": tw.wordsep_re, "wordsep_simple": tw.wordsep_simple_re,
       "sentence_end": tw.sentence_end_re, "whitespace_only": textwrap._whitespace_only_re,
       "leading_whitespace": textwrap._leading_whitespace_re, "negative_number": p._negative_number_matcher,
       "whitespace": f._whitespace_matcher, "long_break": f._long_break_matcher}
before = sorted(n for n in ("re", "enum") if n in sys.modules)
text = "".join(map(chr, range(0x3000))) + "\U0001F600"
import re
report = {"before": before, "equal": {k: v == re.compile(v.pattern, v.flags) for k, v in got.items()},
          "flags": [getattr(stand_in, n) == int(getattr(re, n)) for n in ("ASCII", "VERBOSE", "DOTALL", "MULTILINE")],
          "escape": stand_in.escape(text) == re.escape(text) and stand_in.escape(b"a.b") == re.escape(b"a.b"),
          "delegates": stand_in.sub is re.sub and sys.modules["re"] is re and type(re).__name__ == "module",
          "wrap": textwrap.wrap("one two-three four " * 5, 12)}
print(repr(report))
'''


def _stdlib_probe(cache: str) -> dict[str, object]:
    python, env = fresh_python({"QEMU_EVMCS_CACHE_DIR": cache})
    out = subprocess.run([*python, "-c", _STDLIB_PROBE], capture_output=True, text=True, timeout=300, env=env,
                         check=True)
    report: dict[str, object] = ast.literal_eval(out.stdout)
    return report


def test_the_standard_librarys_patterns_come_from_the_cache_without_importing_re(tmp_path: Path) -> None:
    """dataclasses, argparse, gettext, locale and textwrap get their patterns through re's stand-in
    (``regexcache.re_stand_ins``): on the first start, compiled by the real ``re`` and recorded; on the next,
    built from the entry with neither ``re`` nor ``enum`` imported. Either way each one equals
    ``re.compile``'s, the stand-in's constants and ``escape`` are ``re``'s, and whatever else is read from it
    is the real module's."""
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    first, second = _stdlib_probe(str(cache)), _stdlib_probe(str(cache))
    assert first["before"] == ["enum", "re"]           # a cold cache: the first miss imported re
    assert second["before"] == []                      # a warm one: nothing did
    stock = textwrap.wrap("one two-three four " * 5, 12)
    for report in (first, second):
        equal = report["equal"]
        assert isinstance(equal, dict) and len(equal) == 11 and all(equal.values()), equal
        assert report["flags"] == [True] * 4
        assert report["escape"] is True and report["delegates"] is True
        assert report["wrap"] == stock


def test_with_re_imported_first_nothing_stands_in_for_it(tmp_path: Path) -> None:
    """A program that imported re itself keeps it: the stdlib modules bind the real module, also after the
    package's own patterns missed a cold cache (the real re is then used, not made re's stand-in's to place)."""
    probe = ("import re, sys\n"
             "import qemu_evmcs.core.kernel\n"       # compiles a pattern of its own: a miss on a cold cache
             "import qemu_evmcs.output.wrap\n"
             "import qemu_evmcs.cli.main\n"
             "import argparse, dataclasses, textwrap\n"
             "print(argparse._re is re and dataclasses.re is re and textwrap.re is re and sys.modules['re'] is re)\n")
    python, env = fresh_python({"QEMU_EVMCS_CACHE_DIR": str(tmp_path / "cold")})
    out = subprocess.run([*python, "-c", probe], capture_output=True, text=True, timeout=300, check=True, env=env)
    assert out.stdout.strip() == "True"
