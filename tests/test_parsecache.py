"""The per-user parse cache (core/parsecache.py): a hit is the parse, any change of text or parser is a miss,
and an entry that is not safely ours is never read. No timing: what is checked is which function ran."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qemu_evmcs.core import parsecache
from qemu_evmcs.core.profile import load_profile_text
from qemu_evmcs.core.registry import load_data


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("QEMU_EVMCS_CACHE_DIR", str(d))
    return d


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
    parsecache._code_id.cache_clear()


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
    parsecache._code_id.cache_clear()


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
    parsecache._code_id.cache_clear()


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

_CLASSES = ("import sys, dataclasses, qemu_evmcs.cli\n"       # the CLI package installs the cache
            "from qemu_evmcs.core import classcache\n"
            "@dataclasses.dataclass(frozen=True)\n"
            "class A:\n    x: int\n    y: str = 'b'\n"
            "a = A(1)\n"
            "print(repr(a), a == A(1), a != A(2), hash(a) == hash(A(1)), dataclasses.replace(a, x=3))\n"
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
    expected = "A(x=1, y='b') True True True A(x=3, y='b')"
    behaviour, state = _classes(str(tmp_path / "c"))
    assert behaviour == expected
    kind, loaded, compiled = state.split()
    assert kind == "installed" and loaded == "0" and int(compiled) >= 5     # __init__, __repr__, __eq__, ...
    behaviour, state = _classes(str(tmp_path / "c"))
    assert behaviour == expected and state.split()[0] == "installed"
    assert int(state.split()[1]) >= 5 and state.split()[2] == "0"          # all from the cache
    (entry,) = (tmp_path / "c").glob("dataclass-code-*-__main__.marshal")     # A's module
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
        classcache._cached_exec(text, {"__name__": "m"}, ns)
        real: dict[str, object] = {}
        # What dataclasses' own exec(text) makes: its module has no __future__ imports (this one has).
        exec(compile(text, "<string>", "exec", dont_inherit=True), {}, real)
        assert ns["__create_fn__"].__code__ == real["__create_fn__"].__code__  # type: ignore[attr-defined]
        assert ns["__create_fn__"](5)(None) == 5  # type: ignore[operator]
    assert list(classcache._codes["m"]) == [text]
    ns = {}
    classcache._cached_exec(compile("y = 2", "<s>", "exec"), {"__name__": "m"}, ns)
    assert ns["y"] == 2 and len(classcache._codes["m"]) == 1
