"""The per-user parse cache (core/parsecache.py): a hit is the parse, any change of text or parser is a miss,
and an entry that is not safely ours is never read. No timing: what is checked is which function ran."""

from __future__ import annotations

import os
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
