"""Read CPUID features from Linux ``/proc/cpuinfo`` (``host import --cpuinfo``).

Why: most hosts cannot run ``host probe`` (no access to /dev/kvm for the operator, or only a support bundle), but
every support bundle has /proc/cpuinfo. Its ``flags`` are what the host kernel sees, an approximation of what KVM
offers a guest (KVM_GET_SUPPORTED_CPUID drops a few and adds the features KVM emulates, ``data/cpuid.yaml``
``kvm_emulated``); ``host probe`` is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from qemu_evmcs.core.cpuid import from_linux
from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.profile import VENDORS
from qemu_evmcs.hostio.probe import parse_cpuinfo
from qemu_evmcs.qemu.models import load_snapshot


@dataclass(frozen=True)
class CpuInfo:
    """The first processor of /proc/cpuinfo, features in QEMU's names (only names QEMU 7.2 knows)."""

    vendor: str | None
    family: int | None
    model: int | None
    stepping: int | None
    model_name: str | None
    features: frozenset[str]


def _keys(text: str) -> set[str]:
    return {line.split(":", 1)[0].strip() for line in text.splitlines() if ":" in line}


def looks_like_cpuinfo(text: str) -> bool:
    """A ``flags`` line and a ``processor`` or ``vendor_id`` line."""
    keys = _keys(text)
    return "flags" in keys and bool(keys & {"processor", "vendor_id"})


def parse(text: str, *, file: str | None = None) -> CpuInfo:
    """The first ``processor`` block's identification and flags (read by ``host probe``'s parser, the one
    /proc/cpuinfo reader), the vendor only if it is one a profile can name.

    :raise InputError: no ``flags`` line.
    """
    if "flags" not in _keys(text):
        raise InputError("no 'flags' line: not /proc/cpuinfo output", file=file)
    info = parse_cpuinfo(text)
    feats = load_snapshot().known(from_linux(info.flags))
    return CpuInfo(vendor=info.vendor if info.vendor in VENDORS else None, family=info.family, model=info.model,
                   stepping=info.stepping, model_name=info.model_name, features=feats)


__all__ = ["CpuInfo", "looks_like_cpuinfo", "parse"]
