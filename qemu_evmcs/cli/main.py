"""``qemu-evmcs``: the thin command-line front end.

Each sub-command lives in ``qemu_evmcs/cli/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a
callable taking the parsed namespace and returning the exit code. This file
only dispatches and turns every :class:`~qemu_evmcs.core.errors.EvmcsError` into the
one-line ``error:`` contract:

- exit 0: success;
- exit 1: the answer is negative (a check that fails, a host that cannot answer): a
  :class:`~qemu_evmcs.core.errors.NegativeAnswer` that reaches here is printed as its verdict line on stdout
  (with ``--json``: the verdict object of docs/json.md), not as an ``error:`` line;
- exit 2: bad input or usage, with ``error: FILE[:LINE]: KEY: what`` on stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn, cast
from collections.abc import Callable, Sequence

from qemu_evmcs.core import lazy
from qemu_evmcs.core.errors import EXIT_BAD_INPUT, EvmcsError, NegativeAnswer
from qemu_evmcs.output.jsonout import print_json


#: Every sub-command, in help order: (name, module under ``qemu_evmcs.cli.commands``, one-line summary).
#: Why a static table: a run imports only the module of the command it runs (importing all eleven cost
#: about 0.1 s, more than the command itself); the top-level ``--help`` lists every command from the
#: summaries here. Each module's ``register()`` passes the same summary (a test checks they agree).
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("host", "host", "import, show and probe host profiles"),
    ("guest-msrs", "guest_msrs", "VMX MSRs an L1 guest reads on a host (eVMCS filter of the kernel's era applied)"),
    ("explain", "explain", "per VMX feature: visible to the L1 guest, or hidden and by which layer"),
    ("validate", "validate", "check CPU model definitions (cpu_models/*.yaml)"),
    ("baseline", "baseline", "VMX features a model (or a pool) gets on every host, unfiltered and eVMCS-filtered"),
    ("negotiate", "negotiate", "negotiate eVMCS, the PV CPUID bit and vmx-*/hv-* flags for a pool"),
    ("migrate-check", "migrate_check", "would an eVMCS guest migrate fine, be blocked, or break?"),
    ("admit", "admit", "can a host join a pool without shrinking what eVMCS guests see?"),
    ("compare-designs", "compare_designs", "migration verdicts per design for every host pair"),
    ("fleet", "fleet", "fleet inventory in SQLite (import, query, stats)"),
    ("report", "report", "one self-contained HTML fleet report (heatmap, pools, designs)"),
)

#: The command modules that may be registered (tests narrow it to the modules they are about).
COMMAND_MODULES: list[str] = [module for _, module, _ in COMMANDS]


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one ``error:`` line and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"error: {self.prog}: {message}\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser. ``only=None``: every command registered (each module imported). ``only=NAME``: only that
    command's module is imported and registered (``""``: none); every other command is listed in ``--help`` by
    its summary."""
    parser = _Parser(prog="qemu-evmcs", description="Hyper-V Enlightened VMCS feature negotiation for QEMU/KVM.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, module, summary in COMMANDS:
        if module not in COMMAND_MODULES:
            continue
        if only is None or name == only:
            lazy.module(f"qemu_evmcs.cli.commands.{module}").register(sub)
        else:
            sub.add_parser(name, help=summary, add_help=False)   # never parsed: another command runs
    return parser


def command_of(argv: Sequence[str]) -> str | None:
    """The sub-command ``argv`` runs: its first argument that is not an option (the top level has only
    ``-h``), or ``None``."""
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return arg
    return None


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit code (never raises for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=command_of(argv) or "")
    args = parser.parse_args(argv)
    func = cast(Callable[[argparse.Namespace], int], args.func)
    try:
        return func(args)
    except NegativeAnswer as err:   # an answer, not an error: stdout, as the command's own verdicts
        if getattr(args, "json", False):
            print_json(err.to_json())
        else:
            print(err.verdict_line())
        return err.exit_code
    except EvmcsError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
