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

import atexit
import gc
import os
import sys
from qemu_evmcs.core.typecheck import TYPE_CHECKING, cast
from collections.abc import Callable, Sequence

from qemu_evmcs.cli.translations import GETTEXT
from qemu_evmcs.core import lazy
from qemu_evmcs.core.errors import EXIT_BAD_INPUT, EvmcsError, InputError, NegativeAnswer
from qemu_evmcs.core.regexcache import re_stand_ins
from qemu_evmcs.output.jsonout import print_json

if TYPE_CHECKING:
    import argparse
    from typing import Any, NoReturn, TextIO
else:
    # argparse imports re (and with it enum: 0.6x a bare interpreter) for patterns the regex cache holds on a
    # warm cache (core/regexcache.py), gettext, whose look-ups (and locale) cli/translations.py answers where
    # no message catalog can exist, and warnings, for deprecated parameters only (1.1 M instructions).
    argparse = lazy.module_deferring("argparse", GETTEXT, "warnings", *re_stand_ins())


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


def terminal_columns() -> int:
    """What :func:`shutil.get_terminal_size` says of the width: ``$COLUMNS``, else the terminal's, else 80.

    Why not call it: argparse does, for every formatter it makes (one per ``add_argument``), and importing
    :mod:`shutil` imports ``bz2``, ``lzma`` and ``fnmatch`` too: 4 ms of a 40 ms command, for a width that
    only help and usage texts use."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns if sys.__stdout__ else 0
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one ``error:`` line and exit 2."""

    def _get_formatter(self) -> argparse.HelpFormatter:
        # argparse's own passes no width, and its formatter then imports shutil (terminal_columns says why);
        # the width it would compute is the same (less 2, as argparse does).
        return self.formatter_class(prog=self.prog, width=terminal_columns() - 2)  # type: ignore[call-arg]

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"error: {self.prog}: {message}\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser. ``only=None``: every command registered (each module imported). ``only=NAME``: only that
    command's module is imported and registered (``""``: none); every other command is listed in ``--help`` by
    its summary (or not at all when ``only`` names a known command)."""
    parser = _Parser(prog="qemu-evmcs", description="Hyper-V Enlightened VMCS feature negotiation for QEMU/KVM.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    # A known command is parsed alone: the other ten sub-parsers would only be listed by a top-level help
    # or usage error, which is not what runs (each was a parser and its message look-ups: a tenth of a start-up).
    alone = only is not None and any(name == only and module in COMMAND_MODULES for name, module, _ in COMMANDS)
    for name, module, summary in COMMANDS:
        if module not in COMMAND_MODULES:
            continue
        if only is None or name == only:
            lazy.module(f"qemu_evmcs.cli.commands.{module}").register(sub)
        elif not alone:
            sub.add_parser(name, help=summary, add_help=False)   # never parsed: listed by --help and errors
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


class _Stdout:
    """``sys.stdout`` while a command runs: a write that fails (a full disk, a device error) is the CLI's
    ``error:`` contract, not a traceback from deep inside whichever ``print`` hit it.

    A reader that went away (``BrokenPipeError``) is left as it is: :func:`run` ends the command quietly."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def write(self, text: str) -> int:
        return int(self._guarded(self._real.write, text))

    def flush(self) -> None:
        self._guarded(self._real.flush)

    @staticmethod
    def _guarded(call: Callable[..., Any], *args: Any) -> Any:
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as err:
            raise _output_failed(err) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _output_failed(err: OSError) -> InputError:
    return InputError(f"writing the output failed: {err.strerror or err}", file="<stdout>")


def run(argv: Sequence[str] | None = None, *, before_command: Callable[[], None] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit code (never raises for bad input).

    :param before_command: called once the command's module is loaded and ``argv`` parsed, right before the
        command runs (:func:`main`: the garbage collector back on).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=command_of(argv) or "")
    args = parser.parse_args(argv)
    func = cast(Callable[[argparse.Namespace], int], args.func)
    if before_command is not None:
        before_command()
    real_stdout = sys.stdout
    sys.stdout = cast("TextIO", _Stdout(real_stdout))
    try:
        return func(args)
    except NegativeAnswer as err:   # an answer, not an error: stdout, as the command's own verdicts
        try:
            if getattr(args, "json", False):
                print_json(err.to_json())
            else:
                print(err.verdict_line())
        except EvmcsError as failed:
            print(f"error: {failed}", file=sys.stderr)
            return failed.exit_code
        except BrokenPipeError:
            pass
        return err.exit_code
    except EvmcsError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:
        if sys.stdout is not real_stdout:
            sys.stdout = real_stdout


def leave(code: int) -> NoReturn:
    """End the process with ``code`` once the answer is out: stdout flushed (a failure there is one
    ``error:`` line and exit 2, a reader that went away is silent), at-exit handlers run, both streams
    flushed; then ``os._exit``, without the interpreter's finalization.

    Why: finalization frees every object and module one by one, about 15 million instructions (0.4x a bare
    ``python -c pass``) after an interactive command has printed its answer; the kernel takes the memory
    back at once. Nothing a normal exit does for us is skipped: the at-exit handlers (the per-user cache
    writes them) run here, in the same order, and the files this package writes are closed when the
    command returns (``output/atomicio``). When another thread still runs, or this Python has no
    ``atexit._run_exitfuncs`` (it is CPython's), the exit is the normal one, which waits for the thread.
    """
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
    except OSError as err:
        _discard_stdout()
        print(f"error: {_output_failed(err)}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    threading = sys.modules.get("threading")
    if run_exitfuncs is None or (threading is not None and threading.active_count() > 1):
        sys.exit(code)
    run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _discard_stdout() -> None:
    """Point fd 1 at ``/dev/null``, so what is still buffered for it goes nowhere, not into a second error
    (the normal exit flushes stdout once more)."""
    try:
        fd = sys.stdout.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):   # not a file (a test's StringIO), or no /dev/null: nothing to redirect
        return
    os.dup2(null, fd)
    os.close(null)


def _collect_after_start_up() -> None:
    """Turn the cyclic garbage collector back on, with every object of the start-up out of its reach.

    Why: the start-up (the command's modules, the registry, the parser) makes tens of thousands of objects
    that live until exit, and the collector walked them again at each older-generation collection, 2-5 %
    of an interactive command (guest-msrs 146.8 -> 143.3 M instructions, validate 209.1 -> 202.8 M). They
    are frozen (``gc.freeze``: never collected, as they would never be garbage anyway) and the command
    itself runs with the collector on: a large fleet's computation may leave cycles to free.
    """
    gc.freeze()
    gc.enable()


def main() -> None:
    """Console-script entry point: the collector is off until the command starts (_collect_after_start_up)."""
    gc.disable()
    leave(run(before_command=_collect_after_start_up))
