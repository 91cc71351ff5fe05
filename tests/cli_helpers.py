"""The in-process ``qemu-evmcs`` runner the CLI tests share.

Why in-process: ``cli.run`` is the real dispatcher (argument parsing, error lines, exit codes) without a
Python start-up per case, which matters for the fuzz tests. Each test file registers only the command
modules it is about, so a broken module elsewhere cannot fail it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence

import pytest

from qemu_evmcs.cli import main as cli

#: ``run(*argv) -> (exit code, stdout, stderr)``.
Run = Callable[..., "tuple[int, str, str]"]


def existing_command_modules() -> list[str]:
    """The command modules of ``cli.COMMAND_MODULES`` that exist in this tree."""
    return [m for m in cli.COMMAND_MODULES if importlib.util.find_spec(f"qemu_evmcs.cli.commands.{m}")]


def cli_runner(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
               modules: Sequence[str] | None = None) -> Run:
    """Register ``modules`` (default: every existing one) and return ``run(*argv)``.

    ``run`` calls ``cli.run`` in-process; an argparse usage error's ``SystemExit`` becomes its exit code;
    stdout and stderr are what the call printed (read from ``capsys``).
    """
    monkeypatch.setattr(cli, "COMMAND_MODULES", list(modules) if modules is not None else existing_command_modules())

    def run(*argv: str) -> tuple[int, str, str]:
        try:
            rc = cli.run(list(argv))
        except SystemExit as exc:  # argparse usage errors
            rc = int(exc.code or 0)
        out, err = capsys.readouterr()
        return rc, out, err

    return run
