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
from qemu_evmcs.qemu.models import load_snapshot

VENDORS = {"GenuineIntel": "GenuineIntel", "AuthenticAMD": "AuthenticAMD", "HygonGenuine": "HygonGenuine",
           "CentaurHauls": "CentaurHauls"}


@dataclass(frozen=True)
class CpuInfo:
    """The first processor of /proc/cpuinfo, features in QEMU's names (only names QEMU 7.2 knows)."""

    vendor: str | None
    family: int | None
    model: int | None
    stepping: int | None
    model_name: str | None
    features: frozenset[str]


def looks_like_cpuinfo(text: str) -> bool:
    """A ``flags`` line and a ``processor`` or ``vendor_id`` line."""
    keys = {line.split(":", 1)[0].strip() for line in text.splitlines() if ":" in line}
    return "flags" in keys and bool(keys & {"processor", "vendor_id"})


def parse(text: str, *, file: str | None = None) -> CpuInfo:
    """The first ``processor`` block's identification and flags.

    :raise InputError: no ``flags`` line.
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if "flags" in fields:
                break            # end of the first processor block
            continue
        if ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if "flags" not in fields:
        raise InputError("no 'flags' line: not /proc/cpuinfo output", file=file)

    def num(key: str) -> int | None:
        try:
            return int(fields[key])
        except (KeyError, ValueError):
            return None

    known = load_snapshot().all_features
    feats = frozenset(f for f in from_linux(fields["flags"].split()) if f in known)
    return CpuInfo(vendor=VENDORS.get(fields.get("vendor_id", "")), family=num("cpu family"), model=num("model"),
                   stepping=num("stepping"), model_name=fields.get("model name"), features=feats)


__all__ = ["CpuInfo", "looks_like_cpuinfo", "parse"]
