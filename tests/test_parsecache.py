"""The per-user parse cache (core/parsecache.py): a hit is the parse, any change of text or parser is a miss,
and an entry that is not safely ours is never read. No timing: what is checked is which function ran."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from proc_helpers import race

from qemu_evmcs.core import parsecache
from qemu_evmcs.core.profile import bundled_profile_dir, load_profile_text
from qemu_evmcs.core.registry import load_data
from qemu_evmcs.fleet import loader as fleet_loader


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty cache directory of this test's own; the memo of parser-file digests is forgotten afterwards
    (even when the test fails), since tests rewrite their parser files."""
    d = tmp_path / "cache"
    monkeypatch.setenv("QEMU_EVMCS_CACHE_DIR", str(d))
    yield d
    parsecache._code_id.cache_clear()


def test_the_cache_never_lands_in_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative XDG_CACHE_HOME is invalid (XDG Base Directory spec: "If an implementation encounters a
    relative path in any of these variables it should consider the path invalid and ignore it"), and with no
    home directory (no HOME, no passwd entry: expanduser leaves "~") there is no cache: never a "rel/" or
    "~/" tree written wherever the command happens to run."""
    monkeypatch.delenv("QEMU_EVMCS_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", "rel")
    assert parsecache.cache_dir() == str(tmp_path / ".cache" / "qemu-evmcs" / "parsed")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert parsecache.cache_dir() == str(tmp_path / "xdg" / "qemu-evmcs" / "parsed")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setattr(os.path, "expanduser", lambda p: p)      # what it does without HOME or a passwd entry
    assert parsecache.cache_dir() is None


def _counting(calls: list[str]):  # type: ignore[no-untyped-def]
    def parse(text: str) -> object:
        calls.append(text)
        return {"text": text, "n": [1, 2.5, None, True]}
    return parse


def _parse(text: str, parse, parser_file: Path) -> object:  # type: ignore[no-untyped-def]
    return parsecache.cached_parse(text, parse, parser="t", parser_files=[str(parser_file)], yaml_version="x")


def test_hit_equals_parse_and_changes_miss(cache: Path, tmp_path: Path) -> None:
    code = tmp_path / "parser.py"
    code.write_text("v1")
    calls: list[str] = []
    parse = _counting(calls)
    first = _parse("a: 1", parse, code)
    assert _parse("a: 1", parse, code) == first and calls == ["a: 1"]      # second time: from the cache
    assert len(list(cache.iterdir())) == 1
    _parse("a: 2", parse, code)                                             # other text: parsed
    assert calls == ["a: 1", "a: 2"]
    parsecache._code_id.cache_clear()
    code.write_text("v2")                                                   # other parser code: parsed again
    _parse("a: 1", parse, code)
    assert calls == ["a: 1", "a: 2", "a: 1"]


def test_an_entry_at_another_texts_address_is_a_miss_never_its_result(cache: Path, tmp_path: Path) -> None:
    """The file name is only an address (checksums, not a digest): an entry found there is served only when
    the text and the parsing code it holds are equal to these. Here text B's entry is put at text A's
    address (what a crafted checksum collision would do): A is parsed again and gets its own result."""
    code = tmp_path / "parser.py"
    code.write_text("v1")
    calls: list[str] = []
    parse = _counting(calls)
    _parse("a: 1", parse, code)
    (entry_a,) = list(cache.iterdir())
    _parse("b: 2", parse, code)
    (entry_b,) = [p for p in cache.iterdir() if p != entry_a]
    os.replace(entry_b, entry_a)
    assert _parse("a: 1", parse, code) == {"text": "a: 1", "n": [1, 2.5, None, True]}
    assert calls == ["a: 1", "b: 2", "a: 1"]
    assert _parse("a: 1", parse, code) == {"text": "a: 1", "n": [1, 2.5, None, True]} and len(calls) == 3


def test_entries_not_safely_ours_are_ignored_and_damage_is_a_miss(cache: Path, tmp_path: Path) -> None:
    code = tmp_path / "parser.py"
    code.write_text("v1")
    calls: list[str] = []
    parse = _counting(calls)
    _parse("x", parse, code)
    (entry,) = cache.iterdir()
    os.chmod(entry, 0o666)                      # writable by others: not read
    _parse("x", parse, code)
    assert len(calls) == 2
    os.chmod(entry, 0o600)
    entry.write_bytes(b"\x00garbage")           # damaged: parsed again, same answer
    assert _parse("x", parse, code) == {"text": "x", "n": [1, 2.5, None, True]} and len(calls) == 3


def test_off_and_non_plain_values_are_not_cached(cache: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    code = tmp_path / "parser.py"
    code.write_text("v1")

    class Sub(float):
        pass

    _parse("y", lambda t: {"k": Sub(1.0)}, code)
    assert not cache.exists() or not list(cache.iterdir())
    monkeypatch.setenv("QEMU_EVMCS_CACHE_DIR", "off")
    calls: list[str] = []
    _parse("z", _counting(calls), code)
    _parse("z", _counting(calls), code)
    assert calls == ["z", "z"]


def test_package_data_and_profiles_read_the_same_through_the_cache(cache: Path) -> None:
    cold = load_data("eras.yaml")
    assert list(cache.iterdir())
    assert load_data("eras.yaml") == cold
    text = Path(__file__).parent.parent.joinpath("qemu_evmcs", "data", "profiles", "skylake-6.3.yaml").read_text()
    assert load_profile_text(text, "a.yaml") == load_profile_text(text, "b.yaml")
    # A profile whose kernel is a YAML float keeps its written form (5.10 is not 5.1): not plain data, so not
    # cached, and still right.
    floaty = text.replace("kernel: ", "kernel: 5.10 #", 1)
    assert load_profile_text(floaty).version.minor == 10


def test_shared_containers_are_checked_once() -> None:
    """A "billion laughs" graph: 9 levels of 9 references to the level below is checked in linear time."""
    node: object = {"lol": 1}
    for _ in range(30):
        node = {f"k{j}": node for j in range(9)}
    assert parsecache.is_plain(node)
    assert not parsecache.is_plain({"a": [node, {1.5, 2}]})


# --------------------------------------------------------------------------- compiled dataclass methods

_CLASSES = ("import sys, types, dataclasses, qemu_evmcs\n"    # the package installs the cache
            "from qemu_evmcs.core import classcache\n"
            # A is defined in a module of this package (only those are cached) ...
            "mod = types.ModuleType('qemu_evmcs._probe'); sys.modules[mod.__name__] = mod\n"
            "exec('import dataclasses\\n@dataclasses.dataclass(frozen=True)\\n'\n"
            "     'class A:\\n    x: int\\n    y: str = \"b\"\\n', mod.__dict__)\n"
            "A = mod.A\n"
            # ... Other in __main__, like any other package's dataclass: compiled as dataclasses always does.
            "@dataclasses.dataclass\n"
            "class Other:\n    z: int\n"
            "a = A(1)\n"
            "print(repr(a), a == A(1), a != A(2), hash(a) == hash(A(1)), dataclasses.replace(a, x=3), Other(4))\n"
            "loaded = sum(classcache._loaded.values())\n"
            "print('installed' if dataclasses.__dict__.get('exec') is classcache._cached_exec else 'off',\n"
            "      loaded, sum(map(len, classcache._codes.values())) - loaded)\n")


def _classes(cache_env: str) -> tuple[str, str]:
    out = subprocess.run([sys.executable, "-c", _CLASSES], capture_output=True, text=True, check=True,
                         env={**os.environ, "QEMU_EVMCS_CACHE_DIR": cache_env})
    first, second = out.stdout.splitlines()
    return first, second


def test_dataclass_methods_are_compiled_once_then_served_from_the_cache(tmp_path: Path) -> None:
    """A dataclass behaves the same whether its methods were compiled or came from the cache; the second
    process compiles nothing; an entry others could have written is not read; "off" installs nothing."""
    expected = "A(x=1, y='b') True True True A(x=3, y='b') Other(z=4)"
    behaviour, state = _classes(str(tmp_path / "c"))
    assert behaviour == expected
    kind, loaded, compiled = state.split()
    assert kind == "installed" and loaded == "0" and int(compiled) >= 5     # __init__, __repr__, __eq__, ...
    behaviour, state = _classes(str(tmp_path / "c"))
    assert behaviour == expected and state.split()[0] == "installed"
    assert int(state.split()[1]) >= 5 and state.split()[2] == "0"          # all from the cache
    (entry,) = (tmp_path / "c").glob("dataclass-code-*.marshal")   # A's module only, not Other's (__main__)
    assert entry.name.endswith("-qemu_evmcs._probe.marshal")
    os.chmod(entry, 0o666)                                                   # writable by others: not read
    assert _classes(str(tmp_path / "c"))[1].split()[1] == "0"
    behaviour, state = _classes("off")
    assert behaviour == expected and state.split()[0] == "off"


def test_cached_exec_is_exec(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Same code object as compiling the text, compiled once; non-text arguments go to the real exec."""
    from qemu_evmcs.core import classcache
    monkeypatch.setattr(classcache, "_codes", {})
    monkeypatch.setattr(classcache, "_loaded", {})
    monkeypatch.setattr(classcache, "_dir", str(tmp_path))
    text = "def __create_fn__(x):\n def f(self):\n  return x\n return f\n"
    for _ in range(2):
        ns: dict[str, object] = {}
        classcache._cached_exec(text, {"__name__": "qemu_evmcs.m"}, ns)
        real: dict[str, object] = {}
        # What dataclasses' own exec(text) makes: its module has no __future__ imports (this one has).
        exec(compile(text, "<string>", "exec", dont_inherit=True), {}, real)
        assert ns["__create_fn__"].__code__ == real["__create_fn__"].__code__  # type: ignore[attr-defined]
        assert ns["__create_fn__"](5)(None) == 5  # type: ignore[operator]
    assert list(classcache._codes["qemu_evmcs.m"]) == [text]
    ns = {}
    classcache._cached_exec(compile("y = 2", "<s>", "exec"), {"__name__": "qemu_evmcs.m"}, ns)
    assert ns["y"] == 2 and len(classcache._codes["qemu_evmcs.m"]) == 1
    ns = {}
    classcache._cached_exec(text, {"__name__": "otherpkg.m"}, ns)     # another package's: the real exec only
    assert ns["__create_fn__"](6)(None) == 6  # type: ignore[operator]
    assert list(classcache._codes) == ["qemu_evmcs.m"]


# ---------------------------------------------------------------- the bound on disk (issue 14: hostile environments)
def _entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.name.endswith(".marshal"))


@pytest.fixture()
def small_cap(cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of at most 8 entries, pruned after every 2 writes of a process (to 6), first pruned at this
    process's first write (as in a fresh process)."""
    # raising=False: on the code before the caps these tests fail on their counts, not here.
    monkeypatch.setattr(parsecache, "MAX_ENTRIES", 8, raising=False)
    monkeypatch.setattr(parsecache, "PRUNE_EVERY", 2, raising=False)
    monkeypatch.setattr(parsecache, "_unpruned", None, raising=False)
    return cache


def test_the_entry_cap_holds_and_a_recent_hit_survives_pruning(small_cap: Path, tmp_path: Path) -> None:
    """30 texts written into a cache capped at 8 entries: never more than 8 files, the least recently used go
    first, and an entry read recently is still a hit (its parse is not run again)."""
    code = tmp_path / "parser.py"
    code.write_text("v1")
    calls: list[str] = []
    parse = _counting(calls)
    _parse("keep", parse, code)
    (kept,) = _entries(small_cap)
    for i in range(30):
        # "keep" was just read: what the file system's atime says (relatime refreshes it at the first read
        # after a write), set here by hand, as the newest use of all.
        os.utime(kept, ns=(4_000_000_000 * 10**9, kept.stat().st_mtime_ns))
        _parse(f"t{i}", parse, code)
        assert len(_entries(small_cap)) <= 8, i
    assert kept in _entries(small_cap)
    calls.clear()
    assert _parse("keep", parse, code) == {"text": "keep", "n": [1, 2.5, None, True]} and calls == []
    _parse("t0", parse, code)            # the oldest was pruned: parsed again
    assert calls == ["t0"]


def test_the_byte_cap_holds(small_cap: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries of ~10 kB each under a 40,000-byte cap: at most 4 stay, whatever the entry count allows."""
    monkeypatch.setattr(parsecache, "MAX_BYTES", 40_000, raising=False)
    monkeypatch.setattr(parsecache, "PRUNE_BYTES", 10_000, raising=False)
    code = tmp_path / "parser.py"
    code.write_text("v1")
    for i in range(12):
        _parse(f"b{i}", lambda t: {"t": t, "pad": "x" * 10_000}, code)
        assert sum(p.stat().st_size for p in _entries(small_cap)) <= 40_000, i


def test_entries_vanishing_under_a_prune_never_raise(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process prunes at the same time: every entry disappears between the listing and its stat (and
    its unlink). The prune still ends quietly."""
    cache.mkdir()
    for i in range(20):
        (cache / f"t-{i:02d}.marshal").write_bytes(b"N")
    real = os.scandir

    class Vanishing:
        def __init__(self, path: str) -> None:
            self._it = real(path)

        def __enter__(self) -> Vanishing:
            return self

        def __exit__(self, *exc: object) -> None:
            self._it.close()

        def __iter__(self):  # type: ignore[no-untyped-def]
            for entry in self._it:
                os.unlink(entry.path)        # the other process got there first
                yield entry

    monkeypatch.setattr(os, "scandir", Vanishing)
    parsecache.prune(str(cache), max_entries=0, max_bytes=0)
    assert _entries(cache) == []


def test_concurrent_prunes_never_raise(cache: Path) -> None:
    """Four threads prune one directory at once (each would remove the same oldest entries)."""
    cache.mkdir()
    for i in range(400):
        (cache / f"t-{i:03d}.marshal").write_bytes(b"N")
    errors = race(lambda: parsecache.prune(str(cache), max_entries=10, max_bytes=1 << 30), 4)
    assert errors == [] and len(_entries(cache)) <= 10


def test_a_read_only_or_full_cache_only_falls_back_to_parsing(small_cap: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Pruning cannot remove anything (read-only) and then nothing can be written (full disk): every answer is
    still the parse."""
    code = tmp_path / "parser.py"
    code.write_text("v1")
    calls: list[str] = []
    for i in range(12):
        _parse(f"r{i}", _counting(calls), code)

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "unlink", refuse)
    for i in range(12, 20):
        assert _parse(f"r{i}", _counting(calls), code) == {"text": f"r{i}", "n": [1, 2.5, None, True]}
    monkeypatch.setattr(os, "replace", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
    assert _parse("full", _counting(calls), code) == {"text": "full", "n": [1, 2.5, None, True]}
    assert len(calls) == 21


def test_a_fleet_run_caches_only_its_first_distinct_documents(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fleet loader sends at most MAX_CACHED_FIRST first documents per run through the cache (3 here): a
    one-off fleet of many distinct texts gains nothing from caching them and would push out the entries every
    command reads. The other documents are parsed as before (same answer)."""
    monkeypatch.setattr(fleet_loader, "MAX_CACHED_FIRST", 3, raising=False)
    body = Path(bundled_profile_dir(), "skylake-5.10.yaml").read_text()
    # Six distinct texts (the model name, which the fingerprint ignores, differs), so six first documents.
    text = "".join("---\n" + body.replace("name: skylake-5.10", f"name: h{i}", 1)
                   .replace("model_name: Intel", f"model_name: M{i} Intel", 1) for i in range(6))
    loader = fleet_loader.FleetLoader()
    loader.add_text(text, "f.yaml")
    assert loader.parsed == 6 and sum(map(len, loader.fleet.members.values())) == 6
    assert len([p for p in cache.iterdir() if p.name.startswith("fleet-first-")]) == 3
