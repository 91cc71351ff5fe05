"""Every command's JSON output against the documented schema in docs/json.md (issue 13, "One vocabulary").

The schemas are read from the ```schema NAME``` blocks of docs/json.md (the documentation is the expectation,
not the code): every key an output has must be documented and every documented key present (unless marked
``?``), with the documented types. Fixed keys must be snake_case. Inputs are bundled profiles and models and
the test fixtures, so each command runs in-process in well under a second.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from qemu_evmcs.cli.main import run
from qemu_evmcs.core.profile import bundled_profile_dir

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "json.md"
MODELS = ROOT / "qemu_evmcs" / "data" / "cpu_models"
FIXTURES = ROOT / "tests" / "data" / "models"
SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")
TYPES: dict[str, Any] = {"str": str, "int": int, "bool": bool, "number": (int, float)}


def schemas() -> dict[str, Any]:
    text = DOC.read_text(encoding="utf-8")
    found = re.findall(r"```schema ([a-z-]+)\n(.*?)```", text, flags=re.S)
    out = {name: json.loads(body) for name, body in found}
    assert len(out) == len(found), "a schema name is used twice"
    return out


def check(value: Any, schema: Any, path: str = "$") -> None:
    """Raise AssertionError naming the first place ``value`` does not match ``schema`` (notation: docs/json.md)."""
    if isinstance(schema, str):
        alts = schema.split("|")
        if "any" in alts or (value is None and "null" in alts):
            return
        for alt in alts:
            if alt != "null" and isinstance(value, TYPES[alt]) and not (alt == "int" and isinstance(value, bool)):
                return
        raise AssertionError(f"{path}: {value!r} is not {schema}")
    if isinstance(schema, list):
        assert isinstance(value, list), f"{path}: not a list"
        for i, item in enumerate(value):
            check(item, schema[0], f"{path}[{i}]")
        return
    if set(schema) == {"null|"}:
        if value is not None:
            check(value, schema["null|"], path)
        return
    assert isinstance(value, dict), f"{path}: not an object"
    if set(schema) == {"*"}:
        for key, item in value.items():
            check(item, schema["*"], f"{path}.{key}")
        return
    declared = {k.rstrip("?"): (k.endswith("?"), v) for k, v in schema.items()}
    extra = set(value) - set(declared)
    assert not extra, f"{path}: undocumented keys {sorted(extra)}"
    for key, (optional, sub) in declared.items():
        assert SNAKE.match(key), f"{path}.{key}: not snake_case"
        if key not in value:
            assert optional, f"{path}: documented key {key!r} missing"
            continue
        check(value[key], sub, f"{path}.{key}")


def test_doc_schemas_are_snake_case_and_well_formed() -> None:
    def walk(schema: Any, path: str) -> None:
        if isinstance(schema, str):
            assert all(a in (*TYPES, "null", "any") for a in schema.split("|")), f"{path}: {schema}"
        elif isinstance(schema, list):
            assert len(schema) == 1, path
            walk(schema[0], path + "[]")
        else:
            for key, sub in schema.items():
                assert key in ("*", "null|") or SNAKE.match(key.rstrip("?")), f"{path}.{key}"
                walk(sub, f"{path}.{key}")
    for name, schema in schemas().items():
        walk(schema, name)


def _json(capsys: pytest.CaptureFixture[str], argv: list[str], rc: int = 0) -> Any:
    assert run(argv) == rc, argv
    out, err = capsys.readouterr()
    assert err == "", (argv, err)          # negative answers too: the answer is the JSON, no error: line
    return json.loads(out)


CASES: list[tuple[str, list[str], int]] = [
    ("guest-msrs", ["guest-msrs", "--host", "skylake-6.3", "--json"], 0),
    ("guest-msrs", ["guest-msrs", "--host", "cascadelake-5.4", "--design", "revision", "--json"], 0),
    ("explain", ["explain", "--host", "skylake-6.3", "--json"], 0),
    ("explain", ["explain", "--host", "icelake-6.1", "--feature", "vmx-posted-intr", "--json"], 0),
    ("baseline", ["baseline", "--model", "Skylake-Server-evmcs", "--hosts", "skylake-6.3", "skylake-5.10",
                  "skylake-nested-off-6.1", "--json"], 0),
    ("baseline", ["baseline", "--pool", "skylake-6.3", "skylake-5.10", "--json"], 0),
    ("baseline", ["baseline", "--model", "max", "--hosts", "haswell-5.15", "broadwell-6.1", "--json"], 0),
    ("negotiate", ["negotiate", "--model", "max", "--hosts", "skylake-6.3", "skylake-5.10", "--json"], 0),
    ("negotiate", ["negotiate", "--model", "max", "--hosts", "icelake-6.1", "--design", "revision", "--target",
                   "simulator", "--json"], 0),
    ("negotiate", ["negotiate", "--model", "max", "--hosts", "skylake-6.3", "epyc-amd-6.6", "--json"], 1),
    ("negotiate-all", ["negotiate", "--model", "Skylake-Server-evmcs", "--hosts", "skylake-6.3", "skylake-5.10",
                       "--design", "all", "--json"], 0),
    ("migrate-check", ["migrate-check", "--model", "max", "--from", "skylake-5.10", "--to", "skylake-6.3",
                       "--json"], 1),
    ("migrate-check", ["migrate-check", "--model", "max", "--from", "icelake-6.1", "--to", "skylake-5.10",
                       "--design", "revision", "--target", "simulator", "--json"], 1),
    ("admit", ["admit", "--pool", "skylake-6.3", "--candidate", "skylake-5.10", "--json"], 0),
    ("admit", ["admit", "--pool", "skylake-6.3", "--candidate", "epyc-amd-6.6", "--json"], 1),
    ("compare-designs", ["compare-designs", "--hosts", "skylake-6.3", "skylake-5.10", "skylake-nested-off-6.1",
                         "--json"], 0),
    ("validate", ["validate", str(MODELS / "Skylake-Server-evmcs.yaml"), "--hosts", "skylake-6.3", "skylake-5.10",
                  "--json"], 0),
    ("validate", ["validate", str(FIXTURES / "typos.yaml"), "--json"], 1),
    ("validate-qemu-models", ["validate", "--qemu-models", "--json"], 0),
    # negative answers given before a command's own document can exist: the one verdict document (issue 13)
    ("verdict", ["explain", "--host", "epyc-amd-6.6", "--json"], 1),
    ("verdict", ["guest-msrs", "--host", "skylake-nested-off-6.1", "--json"], 1),
    ("verdict", ["migrate-check", "--model", "max", "--from", "epyc-amd-6.6", "--to", "skylake-6.3", "--json"], 1),
]


@pytest.mark.parametrize("name,argv,rc", CASES, ids=[" ".join(c[1][:1] + c[1][-3:-1]) for c in CASES])
def test_command_json_matches_the_documented_schema(name: str, argv: list[str], rc: int,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    check(_json(capsys, argv, rc), schemas()[name])


def test_fleet_json_matches_the_documented_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "inv.db")
    profiles = Path(bundled_profile_dir())
    paths = [str(profiles / f"{n}.yaml") for n in ("skylake-6.3", "skylake-5.10", "epyc-amd-6.6")]
    check(_json(capsys, ["fleet", "import", "--db", db, "--pool", "lab", *paths, "--json"]), schemas()["fleet-import"])
    check(_json(capsys, ["fleet", "query", "--db", db, "--json"]), schemas()["fleet-query"])
    check(_json(capsys, ["fleet", "stats", "--db", db, "--json"]), schemas()["fleet-stats"])


def test_every_json_command_is_documented() -> None:
    """A command gaining --json must gain a schema here too (host probe, report: see docs/json.md)."""
    covered = {c[1][0] for c in CASES} | {"fleet"}
    assert "launch-report" in schemas()     # checked by tests/test_launch_guestview.py (a started emulator)
    from qemu_evmcs.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    with_json = set()
    for name, p in sub.choices.items():  # type: ignore[union-attr]
        if any("--json" in a.option_strings for a in p._actions):
            with_json.add(name)
        for a in p._actions:
            if getattr(a, "choices", None) and isinstance(a.choices, dict):
                if any(any("--json" in b.option_strings for b in sp._actions) for sp in a.choices.values()):
                    with_json.add(name)
    assert with_json - covered <= {"host"}, with_json - covered


def test_feature_counts_agree_between_commands(capsys: pytest.CaptureFixture[str]) -> None:
    """negotiate's "guest sees N VMX features" is its JSON guest_features and admit's pool_guest_features for the
    same pool; vmx_on (what -cpu sets) is a subset, the rest named in the text (issue 13)."""
    pool = ["skylake-6.3", "skylake-5.10"]
    assert run(["negotiate", "--model", "max", "--hosts", *pool]) == 0
    text = capsys.readouterr().out
    n = int(re.search(r"guest sees (\d+) VMX features", text).group(1))  # type: ignore[union-attr]
    neg = _json(capsys, ["negotiate", "--model", "max", "--hosts", *pool, "--json"])
    adm = _json(capsys, ["admit", "--pool", *pool, "--candidate", "skylake-6.3", "--json"])
    assert n == len(neg["guest_features"]) == len(adm["pool_guest_features"])
    assert sorted(neg["guest_features"]) == adm["pool_guest_features"]
    implied = [f for f in neg["guest_features"] if f not in neg["vmx_on"]]
    assert set(neg["vmx_on"]) <= set(neg["guest_features"])
    assert f"({n - len(implied)} set by -cpu; {', '.join(implied)}:" in text
