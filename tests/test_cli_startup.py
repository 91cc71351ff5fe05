"""Start-up of the ``qemu-evmcs`` CLI: only the running command's module is loaded, asyncio only where used.

Why: an interactive command (``guest-msrs``, ``explain``) is a short computation; importing every command
module and asyncio used to cost more than the command itself. These tests check *what is imported* in a
fresh interpreter (``sys.modules``), never how long it takes (timings are scripts/bench-startup's job).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fresh_python import fresh_python
from qemu_evmcs.cli import main as cli
from qemu_evmcs.cli.translations import LOCALEDIR
from qemu_evmcs.core.profile import bundled_profile_dir

#: Runs the real dispatcher in a fresh interpreter, then prints the modules loaded on stderr, as a Python
#: literal (json would import re, which the commands themselves no longer do on a warm cache).
_PROBE = ("import sys, io, contextlib\n"
          "import qemu_evmcs.cli.main as m\n"
          "buf = io.StringIO()\n"
          "try:\n"
          "    with contextlib.redirect_stdout(buf):\n"
          "        rc = m.run(sys.argv[1:])\n"
          "except SystemExit as exc:\n"
          "    rc = exc.code\n"
          "sys.stderr.write(repr({'rc': rc, 'modules': sorted(sys.modules), 'out': buf.getvalue()}))\n")


def _run_fresh(*argv: str, env: dict[str, str] | None = None) -> tuple[int, set[str], str]:
    """(exit code, modules loaded, stdout) of ``qemu-evmcs ARGV`` in a fresh interpreter (``env``: added to
    this process's environment)."""
    python, environ = fresh_python(env)
    out = subprocess.run([*python, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=120, check=True,
                         env=environ)
    info = ast.literal_eval(out.stderr)
    return int(info["rc"]), set(info["modules"]), str(info["out"])


def _modules_after(*argv: str) -> tuple[int, set[str]]:
    rc, mods, _ = _run_fresh(*argv)
    return rc, mods


def test_guest_msrs_imports_neither_asyncio_nor_other_commands() -> None:
    rc, mods = _modules_after("guest-msrs", "--host", "skylake-6.3")
    assert rc == 0
    assert "asyncio" not in mods
    commands = {m.rsplit(".", 1)[1] for m in mods if m.startswith("qemu_evmcs.cli.commands.")}
    assert commands == {"guest_msrs"}


def test_a_parse_cache_hit_imports_no_yaml_code(tmp_path: Path) -> None:
    """Once the registry, the eras and the profile are in the parse cache, ``guest-msrs`` runs without PyYAML
    (about a quarter of its start-up) and without tempfile (only needed to write an entry); the first run,
    a miss for each text, parses with PyYAML and writes the entries. Same output both times."""
    env = {"QEMU_EVMCS_CACHE_DIR": str(tmp_path / "cache")}
    rc, first, out1 = _run_fresh("guest-msrs", "--host", "skylake-6.3", env=env)
    assert rc == 0 and "yaml" in first and "tempfile" in first        # misses: parsed and written
    rc, mods, out2 = _run_fresh("guest-msrs", "--host", "skylake-6.3", env=env)
    assert rc == 0 and out2 == out1
    assert not {m for m in mods if m == "yaml" or m.startswith(("yaml.", "_yaml"))}
    assert "qemu_evmcs.core.profileyaml" not in mods and "tempfile" not in mods
    assert "difflib" not in mods                   # only for "did you mean" hints (core/lazy.py)


def test_baseline_of_a_fleet_file_on_a_parse_cache_hit_imports_no_yaml(tmp_path: Path) -> None:
    """The fleet loader needs PyYAML only for first documents the parse cache lacks (fleet/loader.py)."""
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("".join("---\n" + (Path(bundled_profile_dir()) / f"{n}.yaml").read_text()
                             for n in ("skylake-6.3", "icelake-6.1")))
    env = {"QEMU_EVMCS_CACHE_DIR": str(tmp_path / "cache")}
    rc, first, out1 = _run_fresh("baseline", "--pool", str(fleet), env=env)
    assert rc == 0 and "yaml" in first
    rc, mods, out2 = _run_fresh("baseline", "--pool", str(fleet), env=env)
    assert rc == 0 and out2 == out1 and "yaml" not in mods and "qemu_evmcs.core.yamlsafe" not in mods
    # Nor what only inventories, forked loads and libvirt cpu_maps need; nor re, enum and json (the JSON answer
    # goes through output/jsonout, the wrapped text through output/wrap: 20 M instructions of a 160 M start).
    assert not {"sqlite3", "pickle", "xml.etree.ElementTree", "re", "enum", "json"} & mods
    rc, _, out_json = _run_fresh("baseline", "--pool", str(fleet), "--json", env=env)
    assert rc == 0 and out_json.startswith("{\n  ") and out_json.endswith("}\n")


def test_validate_on_a_parse_cache_hit_imports_no_yaml(tmp_path: Path) -> None:
    """Model definitions and model-releases.yaml come from the parse cache the second time (qemu/models.py)."""
    env = {"QEMU_EVMCS_CACHE_DIR": str(tmp_path / "cache")}
    rc1, first, out1 = _run_fresh("validate", env=env)
    rc2, mods, out2 = _run_fresh("validate", env=env)
    assert "yaml" in first and (rc2, out2) == (rc1, out1) and "yaml" not in mods


def test_explain_loads_only_its_own_module_and_the_one_it_shares() -> None:
    rc, mods = _modules_after("explain", "--host", "skylake-6.3")
    assert rc == 0
    assert "asyncio" not in mods
    # explain reuses guest-msrs's host options (cli/commands/explain.py imports them).
    assert {m for m in mods if m.startswith("qemu_evmcs.cli.commands.")} == {
        "qemu_evmcs.cli.commands.explain", "qemu_evmcs.cli.commands.guest_msrs"}


def test_top_level_help_lists_every_command_without_importing_them() -> None:
    # A wide terminal: argparse wraps help to COLUMNS (and may split "eVMCS-filtered" at its hyphen).
    rc, mods, text = _run_fresh("--help", env={"COLUMNS": "400"})
    assert rc == 0
    assert not [m for m in mods if m.startswith("qemu_evmcs.cli.commands.")]
    for name, _, summary in cli.COMMANDS:
        assert f"\n    {name} " in text or f"\n    {name}\n" in text, name
        assert f" {summary}\n" in text, name      # the whole summary, not only its first word


def test_the_static_table_says_what_each_module_registers() -> None:
    """The table is what ``--help`` shows: each command module must register that name with that summary."""
    for name, module, summary in cli.COMMANDS:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        importlib.import_module(f"qemu_evmcs.cli.commands.{module}").register(sub)
        helps = {a.dest: a.help for a in sub._choices_actions}
        assert helps == {name: summary}, module


def test_command_of_finds_the_sub_command() -> None:
    assert cli.command_of(["guest-msrs", "--host", "x"]) == "guest-msrs"
    assert cli.command_of(["-h"]) is None
    assert cli.command_of(["--", "guest-msrs"]) is None
    assert cli.command_of([]) is None


#: The interactive commands of scripts/bench-startup (issue 15: at most 3.5x a bare interpreter).
_INTERACTIVE = (("guest-msrs", "--host", "skylake-6.3"), ("explain", "--host", "skylake-6.3"),
                ("negotiate", "--model", "Skylake-Server-evmcs", "--hosts", "skylake-6.3", "skylake-5.10",
                 "icelake-6.1"), ("validate",))
#: Standard-library modules none of them needs on a warm cache, and what pulled each in before:
#: inspect, ast, dis, tokenize (dataclasses, for a docstring: core/lazy.module_deferring); typing (annotations
#: only: core/typecheck.py); shutil, bz2, lzma (argparse's terminal width: cli/main.terminal_columns, and
#: rmtree on rare paths); tempfile (writing a cache entry or staging a fleet); re and enum (dataclasses,
#: argparse, gettext, locale, textwrap, for patterns the regex cache holds: core/regexcache.re_stand_ins); copy
#: and weakref (dataclasses, for asdict and astuple only); unicodedata (a C extension, for non-ASCII names only);
#: the importlib package (core/lazy.py and core/parsecache.py: the import system's own functions do) and
#: warnings (argparse, for deprecated calls only: cli/main.py).
_NOT_AT_START = {"inspect", "ast", "dis", "tokenize", "typing", "shutil", "bz2", "lzma", "tempfile", "re", "enum",
                 "copy", "weakref", "unicodedata", "importlib", "importlib.machinery", "warnings"}


def test_interactive_commands_on_a_warm_cache_import_none_of_the_costly_stdlib(tmp_path: Path) -> None:
    env = {"QEMU_EVMCS_CACHE_DIR": str(tmp_path / "cache")}
    for argv in _INTERACTIVE:
        rc1, _, out1 = _run_fresh(*argv, env=env)             # fills the cache
        rc2, mods, out2 = _run_fresh(*argv, env=env)
        assert (rc2, out2) == (rc1, out1) and rc2 == 0, argv
        assert _NOT_AT_START & mods == set(), argv
        if not os.path.isdir(LOCALEDIR):      # no catalog can exist: argparse's words need neither of them
            assert {"gettext", "locale"} & mods == set(), argv
        # Nor what only some paths need: XML (libvirt output), SQLite (inventories), OpenSSL (fingerprints:
        # the fleet loader of negotiate groups its hosts by them), threads (forked fleet loads).
        assert {"xml.etree.ElementTree", "sqlite3"} & mods == set(), argv
        if argv[0] in ("guest-msrs", "explain"):
            assert {"hashlib", "threading"} & mods == set(), argv
        # No libvirt code for an answer in text (cpu_map, the XML writer, domain capabilities).
        assert {"qemu_evmcs.output.libvirt", "qemu_evmcs.qemu.libvirt_cpumap", "qemu_evmcs.hostio.libvirt_caps"} \
            & mods == set(), argv


def test_dataclasses_without_inspect_still_gets_the_real_one_on_first_use() -> None:
    """The stand-ins of core/lazy.module_deferring: a dataclass without a docstring (dataclasses then calls
    inspect.signature) gets the docstring it gets without this package, asdict (copy.deepcopy) gives what it
    gives without it, and anyone importing inspect or copy afterwards gets the real module."""
    probe = ("import sys\n"
             "{imports}\n"
             "before = 'inspect' in sys.modules\n"
             "from dataclasses import dataclass\n"
             "@dataclass\n"
             "class P:\n"
             "    x: int\n"
             "    y: str = 'a'\n"
             "import dataclasses as D\n"
             "as_dict = D.asdict(P(1, [2]))\n"
             "import inspect, copy\n"
             "print(repr((before, P.__doc__, type(inspect).__name__, inspect.__name__,"
             " hasattr(inspect, 'getsource'), sys.modules['inspect'] is inspect,"
             " sys.modules['dataclasses'].inspect.signature is inspect.signature, as_dict,"
             " sys.modules['copy'] is copy, D.copy.deepcopy is copy.deepcopy)))\n")

    def run(imports: str) -> tuple[object, ...]:
        out = subprocess.run([sys.executable, "-c", probe.format(imports=imports)], capture_output=True, text=True,
                             timeout=120, check=True).stdout
        return tuple(ast.literal_eval(out))

    stock = run("")                                   # dataclasses as Python has it, imported by the class
    assert stock[0] is False and str(stock[1]).startswith("P(x: ")
    assert run("import qemu_evmcs") == stock          # the package imported it, with inspect deferred
    # A program that imported dataclasses itself keeps it as it was (nothing deferred).
    assert run("import dataclasses, qemu_evmcs") == (True, *stock[1:])


def test_argparse_without_warnings_still_warns_through_the_real_module() -> None:
    """cli/main.py imports argparse with ``warnings`` deferred (argparse warns only about deprecated calls): the
    start leaves it unimported, and a deprecated call (nesting argument groups, Python 3.11) still warns
    through the real module, whose filters and records apply."""
    probe = ("import sys\n"
             "import qemu_evmcs.cli.main\n"
             "before = 'warnings' in sys.modules\n"
             "import argparse, warnings\n"
             "with warnings.catch_warnings(record=True) as seen:\n"
             "    warnings.simplefilter('always')\n"
             "    argparse.ArgumentParser().add_argument_group('a').add_argument_group('b')\n"
             "print(repr((before, [(w.category.__name__, str(w.message)) for w in seen],"
             " sys.modules['warnings'] is warnings)))\n")
    python, env = fresh_python()
    out = subprocess.run([*python, "-c", probe], capture_output=True, text=True, timeout=120, env=env, check=True)
    assert ast.literal_eval(out.stdout) == (False, [("DeprecationWarning", "Nesting argument groups is deprecated.")],
                                            True)


def test_no_dataclass_here_annotates_a_classvar() -> None:
    """dataclasses tells a ``ClassVar`` annotation written as a string (``from __future__ import annotations``)
    only when typing is imported, which a command here no longer does (core/typecheck.py): one would silently
    become a field."""
    pkg = Path(cli.__file__).resolve().parents[1]
    offenders = []
    for path in pkg.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.AnnAssign) and "ClassVar" in ast.unparse(node.annotation):
                offenders.append(f"{path.relative_to(pkg)}:{node.lineno}")
    assert offenders == []


def test_a_known_command_builds_only_its_own_parser_and_an_unknown_one_lists_every_choice() -> None:
    parser = cli.build_parser(only="guest-msrs")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == ["guest-msrs"]
    out = subprocess.run([sys.executable, "-m", "qemu_evmcs", "no-such-command"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("error: qemu-evmcs: argument COMMAND: invalid choice")
    assert all(f"'{name}'" in out.stderr for name, _, _ in cli.COMMANDS)


def test_help_is_wrapped_as_argparse_itself_would(monkeypatch: pytest.MonkeyPatch) -> None:
    """cli/main.terminal_columns stands for shutil.get_terminal_size: the help text is the one argparse's
    own formatter (which asks shutil) writes, at any $COLUMNS."""
    for columns in ("40", "100", "300"):
        monkeypatch.setenv("COLUMNS", columns)
        for name, _, _ in cli.COMMANDS:
            parser = cli.build_parser(only=name)
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
            ours = sub.format_help()
            with monkeypatch.context() as m:
                m.setattr(cli._Parser, "_get_formatter", argparse.ArgumentParser._get_formatter)
                stock = sub.format_help()
            assert ours == stock, (columns, name)
            assert ours != sub.format_usage()


#: The dispatcher in a fresh interpreter, reporting (exit code, json imported?, stdout) without importing json.
_NO_JSON_PROBE = ("import sys, io, contextlib\n"
                  "import qemu_evmcs.cli.main as m\n"
                  "buf = io.StringIO()\n"
                  "with contextlib.redirect_stdout(buf):\n"
                  "    rc = m.run(sys.argv[1:])\n"
                  "sys.stderr.write(repr((rc, 'json' in sys.modules, buf.getvalue())))\n")


@pytest.mark.parametrize("argv", [
    ["validate"],
    ["negotiate", "--model", "Skylake-Server-evmcs", "--hosts", "skylake-6.3", "icelake-6.1"],
])
def test_the_qemu_snapshot_comes_from_the_parse_cache_without_json(tmp_path: Path, argv: list[str]) -> None:
    """The QEMU model snapshot (JSON files) goes through the parse cache like the YAML data (qemu/models.py
    ``_read_json``): the second run imports no json, with the same output."""
    python, env = fresh_python({"QEMU_EVMCS_CACHE_DIR": str(tmp_path / "cache")})
    runs = []
    for _ in range(2):
        out = subprocess.run([*python, "-c", _NO_JSON_PROBE, *argv], capture_output=True, text=True,
                             timeout=120, env=env, check=True)
        runs.append(ast.literal_eval(out.stderr))
    (rc1, json1, out1), (rc2, json2, out2) = runs
    assert json1 and not json2
    assert (rc2, out2) == (rc1, out1) and rc1 == 0


def test_inventory_and_host_loading_code_is_loaded_only_when_used() -> None:
    """validate without hosts loads no host-loading code; negotiate on bundled names loads hosts but no
    inventory code (fleet/select.py, fleet/sources.py: is_database lives with the readers)."""
    rc, mods = _modules_after("validate")
    assert rc == 0
    assert not {"qemu_evmcs.fleet.inventory", "qemu_evmcs.fleet.sources", "qemu_evmcs.fleet.loader"} & mods
    rc, mods = _modules_after("negotiate", "--model", "Skylake-Server-evmcs", "--hosts", "skylake-6.3",
                              "icelake-6.1")
    assert rc == 0
    assert "qemu_evmcs.fleet.loader" in mods
    assert not {"qemu_evmcs.fleet.inventory", "sqlite3"} & mods


def test_validate_loads_the_start_up_simulation_only_with_hosts() -> None:
    """validate of the installed definitions checks names, QEMU's rules and each era's filter: it loads neither
    the baseline nor the simulated start-up it needs for ``--hosts`` (policy/validate.py, lazy)."""
    simulation = {"qemu_evmcs.policy.resolve", "qemu_evmcs.policy.negotiate", "qemu_evmcs.qemu.startup",
                  "qemu_evmcs.qemu.basecpuid", "qemu_evmcs.qemu.cpu"}
    rc, mods = _modules_after("validate")
    assert rc == 0
    assert simulation & mods == set()
    rc, mods = _modules_after("validate", "--hosts", "skylake-6.3")
    assert rc in (0, 1)
    assert simulation <= mods


def test_the_installed_script_imports_neither_re_nor_enum(tmp_path: Path) -> None:
    """``bin/qemu-evmcs`` is what ``pip install`` puts on the PATH (pyproject.toml ``script-files``). The script
    pip would write for an entry point imports ``re`` first (checked here against pip's own template), which
    defeats re's stand-in: on a warm cache ours imports neither ``re`` nor ``enum`` (``-X importtime`` lists every
    module imported), with the answer ``python -m qemu_evmcs`` gives."""
    root = Path(cli.__file__).resolve().parents[2]
    script = root / "bin" / "qemu-evmcs"
    python, env = fresh_python({"QEMU_EVMCS_CACHE_DIR": str(tmp_path / "cache")})
    argv = ["guest-msrs", "--host", "skylake-6.3"]

    def imported(*cmd: str) -> tuple[set[str], str]:
        out = subprocess.run([*python, "-X", "importtime", *cmd, *argv], capture_output=True, text=True,
                             timeout=120, check=True, env=env)
        names = {line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
        return names, out.stdout

    imported(str(script))                               # fills the cache
    mods, out = imported(str(script))
    assert {"re", "enum"} & mods == set()
    assert out == imported("-m", "qemu_evmcs")[1]
    pyproject = (root / "pyproject.toml").read_text()
    assert 'script-files = ["bin/qemu-evmcs"]' in pyproject and "qemu-evmcs = " not in pyproject
    # pip's entry-point template (pip/_vendor/distlib/scripts.py), which the script file avoids:
    distlib = Path(subprocess.run([sys.executable, "-c", "import pip._vendor.distlib.scripts as s; print(s.__file__)"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    assert "import re\n" in distlib.read_text()
