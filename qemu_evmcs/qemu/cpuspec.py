"""The one parsed ``-cpu`` argument (:class:`CpuSpec`), and QEMU's start-up failure (:class:`QemuError`).

Why one class: the launch wrapper (what did QEMU do with the user's ``-cpu``?), the simulated QEMU (apply
the string to a vCPU) and the start-up model (:mod:`qemu_evmcs.qemu.startup`) must read a ``-cpu`` string
the same way. QEMU splits it in ``parse_cpu_option()`` + ``x86_cpu_parse_featurestr()`` (QEMU 7.2
``target/i386/cpu.c``): the model name up to the first comma, then ``strtok(",")`` over the rest, so there is
no ``,,`` escape and empty items vanish; ``+feat``/``-feat`` are the legacy syntax, applied after every
``key=value`` property (plus before minus); a bare ``feat`` means ``feat=on``; ``_`` becomes ``-``
(``feat2prop``); mixing ``+feat`` and ``feat=val`` warns.

Standard library and :mod:`qemu_evmcs.qemu.options` only: the simulator imports it at start-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from qemu_evmcs.core.errors import LaunchError
from qemu_evmcs.qemu.options import feat2prop, qapi_bool

#: The program name QEMU prefixes to every error and warning line.
PROG = "qemu-system-x86_64"
#: Exit status of QEMU's ``exit(1)`` error paths.
EXIT_ERROR = 1
#: Exit status a shell reports for a process killed by SIGABRT (128 + 6): QEMU's failed assertion.
EXIT_ABORT = 134
#: ``-cpu`` model names that ask QEMU for a listing instead of a CPU.
PROBE_MODELS = frozenset({"help", "?"})
#: QEMU's property aliases of ``-cpu`` (``x86_cpu_parse_featurestr``: ``tsc-freq`` is ``tsc-frequency``).
PROP_ALIASES = {"tsc-freq": "tsc-frequency"}


class QemuError(LaunchError):
    """A start-up failure of (simulated) QEMU, with QEMU's text.

    :param message: the text QEMU prints after ``qemu-system-x86_64: `` (no prefix).
    :param status: the exit status (1 for ``exit(1)``, 134 for an abort).
    :param extra: further stderr lines (full lines, already prefixed) printed after the message.
    :param stage: the start-up stage that failed (:mod:`qemu_evmcs.qemu.startup` ``STAGE_*``), when the
        raiser knows it better than the stage being run (``hv-evmcs`` refused during CPU expansion).
    """

    def __init__(self, message: str, *, status: int = EXIT_ERROR, extra: Sequence[str] = (),
                 stage: str | None = None) -> None:
        super().__init__(message, layer="qemu")
        self.status = status
        self.extra = list(extra)
        self.stage = stage

    def lines(self) -> list[str]:
        """Every stderr line of this failure, prefixed like QEMU's ``error_report``."""
        return [f"{PROG}: {self.message}", *self.extra]


def is_tracked(name: str) -> bool:
    """The options this tool reports on: ``vmx``, ``vmx-*`` and ``hv-*``."""
    return name == "vmx" or name.startswith(("vmx-", "hv-"))


@dataclass(frozen=True)
class CpuSpec:
    """A parsed ``-cpu`` argument.

    :ivar model: the model name as given (``host``, ``Skylake-Server-v5``).
    :ivar props: ``key=value`` properties (and bare ``feat`` as ``feat=on``) in order, names normalised.
    :ivar plus: ``+feat`` names in order.
    :ivar minus: ``-feat`` names in order.
    :ivar warnings: QEMU's warnings about the string itself (ambiguous ``+feat`` and ``feat=on`` mixes).
    :ivar raw: the argument verbatim (``""`` for a spec built in code).
    """

    model: str
    props: tuple[tuple[str, str], ...] = ()
    plus: tuple[str, ...] = ()
    minus: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    raw: str = field(default="", compare=False)

    @property
    def is_probe(self) -> bool:
        """``-cpu help`` / ``-cpu ?``: a listing, nothing to start or verify."""
        return self.model in PROBE_MODELS

    @property
    def features(self) -> dict[str, bool]:
        """Requested booleans with QEMU's precedence: ``feat=on|off`` / bare ``feat`` first, then every
        ``+feat``, then every ``-feat``. A value that is no QEMU boolean is a :attr:`value_props` entry."""
        out: dict[str, bool] = {}
        for key, value in self.props:
            on = qapi_bool(value.lower())
            if on is not None:
                out[key] = on
        for name in self.plus:
            out[name] = True
        for name in self.minus:
            out[name] = False
        return out

    @property
    def value_props(self) -> dict[str, str]:
        """Non-boolean ``key=value`` properties (``hv-spinlocks=0x1fff``), aliases resolved."""
        return {PROP_ALIASES.get(k, k): v for k, v in self.props if qapi_bool(v.lower()) is None}

    def tracked(self) -> dict[str, bool]:
        """The requested ``vmx``/``vmx-*``/``hv-*`` booleans."""
        return {k: v for k, v in self.features.items() if is_tracked(k)}


def parse_cpu(text: str) -> CpuSpec:
    """Parse ``MODEL[,feat=on|off,+feat,-feat,feat,key=value...]`` like ``x86_cpu_parse_featurestr()``.

    Never fails: an empty model is QEMU's ``unable to find CPU model ''`` later, at start-up
    (:func:`qemu_evmcs.qemu.cpu.check_model`); callers that must refuse it earlier check :attr:`CpuSpec.model`.
    """
    model, _, rest = text.partition(",")
    props: list[tuple[str, str]] = []
    plus: list[str] = []
    minus: list[str] = []
    warnings: list[str] = []
    ambiguous = False
    for feat in rest.split(","):
        if not feat:
            continue
        if feat[0] == "+":
            plus.append(feat2prop(feat[1:]))
            continue
        if feat[0] == "-":
            minus.append(feat2prop(feat[1:]))
            continue
        key, eq, val = feat.partition("=")
        if not eq:
            val = "on"
        key = feat2prop(key)
        if key in plus:
            warnings.append(f'{PROG}: warning: Ambiguous CPU model string. Don\'t mix both "+{key}" and "{key}={val}"')
            ambiguous = True
        if key in minus:
            warnings.append(f'{PROG}: warning: Ambiguous CPU model string. Don\'t mix both "-{key}" and "{key}={val}"')
            ambiguous = True
        props.append((key, val))
    if ambiguous:
        warnings.append(f"{PROG}: warning: Compatibility of ambiguous CPU model strings won't be kept on future "
                        f"QEMU versions")
    return CpuSpec(model=model, props=tuple(props), plus=tuple(plus), minus=tuple(minus),
                   warnings=tuple(warnings), raw=text)


__all__ = ["EXIT_ABORT", "EXIT_ERROR", "PROBE_MODELS", "PROG", "CpuSpec", "QemuError", "is_tracked", "parse_cpu"]
