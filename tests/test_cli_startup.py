"""Start-up of the ``qemu-evmcs`` CLI: only the running command's module is loaded, asyncio only where used.

Why: an interactive command (``guest-msrs``, ``explain``) is a short computation; importing every command
module and asyncio used to cost more than the command itself. These tests check *what is imported* in a
fresh interpreter (``sys.modules``), never how long it takes (timings are scripts/bench-startup's job).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

from qemu_evmcs.cli import main as cli
from qemu_evmcs.core.profile import bundled_profile_dir

#: Runs the real dispatcher in a fresh interpreter, then prints the modules loaded, as JSON, on stderr.
_PROBE = ("import sys, json, io, contextlib\n"
          "import qemu_evmcs.cli.main as m\n"
          "buf = io.StringIO()\n"
          "try:\n"
          "    with contextlib.redirect_stdout(buf):\n"
          "        rc = m.run(sys.argv[1:])\n"
          "except SystemExit as exc:\n"
          "    rc = exc.code\n"
          "sys.stderr.write(json.dumps({'rc': rc, 'modules': sorted(sys.modules), 'out': buf.getvalue()}))\n")


def _run_fresh(*argv: str, env: dict[str, str] | None = None) -> tuple[int, set[str], str]:
    """(exit code, modules loaded, stdout) of ``qemu-evmcs ARGV`` in a fresh interpreter (``env``: added to
    this process's environment)."""
    out = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=120,
                         check=True, env={**os.environ, **(env or {})})
    info = json.loads(out.stderr)
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
    # Nor what only inventories, forked loads and libvirt cpu_maps need.
    assert not {"sqlite3", "pickle", "xml.etree.ElementTree"} & mods


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
