"""``core/regexcache.py``: a pattern built from the cache is the one ``re.compile`` makes.

``re`` pattern objects compare equal when their pattern, flags and compiled program are the same, so each
module-level pattern of the package, as the package built it, is compared with ``re.compile`` of its text and
flags in the same interpreter: first with an empty cache (the patterns are compiled and recorded), then in a
fresh interpreter that builds them from the cache (a counter says how many).
"""

from __future__ import annotations

import json
import marshal
import os
import re
import subprocess
import sys
from pathlib import Path

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
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QEMU_EVMCS_CACHE_DIR": cache}
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300, env=env,
                         check=True)
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
    version, known = marshal.loads(entry.read_bytes())
    key = next(iter(known))
    flags, program, groups, groupindex, indexgroup = known[key]
    known[key] = (flags, [255] * len(program), groups, groupindex, indexgroup)   # not an SRE program
    entry.write_bytes(marshal.dumps((version, known)))
    entry.chmod(0o600)
    again = _run(str(cache))
    patterns = again["patterns"]
    assert isinstance(patterns, dict) and all(v[0] for v in patterns.values())
    assert again["served"] == len(patterns) - 1
    assert _run(str(cache))["served"] == len(patterns) == len(first["patterns"])  # type: ignore[arg-type]
