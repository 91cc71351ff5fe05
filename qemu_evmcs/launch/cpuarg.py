"""The user's ``-cpu`` among the emulator's arguments: which one QEMU uses, and refused before anything starts.

Why apart from :mod:`.verify`: the wrapper reads ``-cpu`` before it starts the emulator, and it starts the
emulator before it imports ``asyncio`` (:mod:`.process`); the verification over QMP needs ``asyncio``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.qemu.cpuspec import CpuSpec, parse_cpu


def parse_cpu_arg(arg: str) -> CpuSpec:
    """The user's ``-cpu`` as QEMU reads it (:func:`qemu_evmcs.qemu.cpuspec.parse_cpu`), refusing what QEMU
    would refuse anyway before the wrapper starts anything: an empty model, feature or property name.

    :raise InputError: empty model or empty feature name.
    """
    model = arg.partition(",")[0].strip()
    if not model:
        raise InputError(f"-cpu {arg!r}: empty CPU model name")
    for item in arg.split(",")[1:]:
        if item[:1] in ("+", "-") and not item[1:]:
            raise InputError(f"-cpu {arg!r}: empty feature name in {item!r}")
        if item and item[0] not in "+-" and not item.partition("=")[0]:
            raise InputError(f"-cpu {arg!r}: empty property name in {item!r}")
    return replace(parse_cpu(arg), model=model)


def find_cpu_index(argv: Sequence[str]) -> int | None:
    """Index in ``argv`` of the value of the last ``-cpu``/``--cpu`` option (QEMU keeps the last one), or None.

    A ``-cpu`` that is itself the value of an earlier ``-cpu`` is that option's value, not a new option.
    The one scan behind :func:`find_cpu_arg` (what is verified) and the wrapper's ``--negotiate`` (what is
    replaced), so that both always mean the same argument.
    """
    found: int | None = None
    i = 0
    while i < len(argv):
        if argv[i] in ("-cpu", "--cpu") and i + 1 < len(argv):
            found = i + 1
            i += 2
            continue
        i += 1
    return found


def find_cpu_arg(argv: Sequence[str]) -> str | None:
    """The value of the last ``-cpu``/``--cpu`` option (QEMU keeps the last one), or None."""
    idx = find_cpu_index(argv)
    return None if idx is None else argv[idx]
