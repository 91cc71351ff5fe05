"""``qemu-evmcs``: the thin command-line front end.

Each sub-command lives in ``qemu_evmcs/cli/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a
callable taking the parsed namespace and returning the exit code. This file
only dispatches and turns every :class:`~qemu_evmcs.core.errors.EvmcsError` into the
one-line ``error:`` contract:

- exit 0: success;
- exit 1: the answer is negative (a check that fails, a host that cannot answer);
- exit 2: bad input or usage, with ``error: FILE[:LINE]: KEY: what`` on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, List, Optional, Sequence, cast

from qemu_evmcs.core.errors import EXIT_BAD_INPUT, EvmcsError


#: Sub-command modules under ``qemu_evmcs.cli.commands``, in help order.
COMMAND_MODULES: List[str] = [
    "host",
    "guest_msrs",
    "explain",
    "validate",
    "baseline",
    "negotiate",
    "migrate_check",
    "admit",
    "compare_designs",
    "fleet",
    "report",
]


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one ``error:`` line and exit 2."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[name-defined]  # noqa: F821
        self.exit(EXIT_BAD_INPUT, f"error: {self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every registered sub-command."""
    parser = _Parser(prog="qemu-evmcs", description="Hyper-V Enlightened VMCS feature negotiation for QEMU/KVM.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        mod = importlib.import_module(f"qemu_evmcs.cli.commands.{name}")
        mod.register(sub)
    return parser


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` and run the command; returns the exit code (never raises for bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = cast(Callable[[argparse.Namespace], int], args.func)
    try:
        return func(args)
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
