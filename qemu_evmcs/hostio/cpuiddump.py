"""Read a bare-metal CPUID dump (``host import --cpuid-dump``): AIDA64 / InstLatx64 text, a VirtualBox CPU database
``.h`` file, or a profile's own ``cpuid:`` lines.

Why: public CPU databases carry the raw CPUID leaves of real CPUs, where /proc/cpuinfo of the machine is not at
hand. The leaves go through the one decoder of the ``leaves`` table (``core/cpuid.py`` :func:`from_raw_dump`, the
table ``host probe`` decodes KVM_GET_SUPPORTED_CPUID with), then keep only names the QEMU snapshot knows, as
``host import --cpuinfo`` does. Only the first logical CPU of a multi-CPU dump is read (the bundled dumps list the
same feature leaves on every CPU).

Formats (one leaf a line; other lines ignored):

- AIDA64: ``CPUID 0000000D: 0000000F-00000A00-00000100-00000000 [SL 01]``; no ``[SL nn]`` means sub-leaf 0, and a
  repeated leaf without one (older AIDA64 versions skip sub-leaves) is dropped, since its sub-leaf is unknown;
- VirtualBox ``g_aCpuIdLeaves``: ``{ 0x00000007, 0x00000000, UINT32_MAX, 0x00000000, 0x029c6fbf, 0x0, 0x0, 0 },``
  (leaf, sub-leaf, sub-leaf mask, eax, ebx, ecx, edx, flags);
- a profile's ``cpuid:`` line, :data:`~qemu_evmcs.core.cpuid.LEAF_LINE`: ``00000007.0: 00000000-029C6FBF-...``.
"""

from __future__ import annotations

from collections.abc import Iterable

from qemu_evmcs.core.cpuid import cpuid_names, from_raw_dump, parse_leaf
from qemu_evmcs.core.errors import InputError
from qemu_evmcs.qemu.models import load_snapshot
from qemu_evmcs.core.regexcache import regex

Leaf = tuple[int, int, int, int, int, int]

_HEX8 = r"([0-9A-Fa-f]{8})"
_AIDA = regex(rf"^\s*CPUID {_HEX8}:\s*{_HEX8}-{_HEX8}-{_HEX8}-{_HEX8}(?:\s*\[SL ([0-9A-Fa-f]{{2,8}})\])?")
_VBOX = regex(r"^\s*\{\s*0x([0-9a-fA-F]{8}),\s*0x([0-9a-fA-F]{8}),\s*(?:0x[0-9a-fA-F]+|UINT32_MAX),"
              r"\s*0x([0-9a-fA-F]{8}),\s*0x([0-9a-fA-F]{8}),\s*0x([0-9a-fA-F]{8}),\s*0x([0-9a-fA-F]{8}),")


def parse(text: str, *, file: str | None = None) -> list[Leaf]:
    """The ``(function, index, eax, ebx, ecx, edx)`` leaves of the first logical CPU in ``text``.

    :raise InputError: no leaf in any known format.
    """
    leaves: list[Leaf] = []
    seen: set[tuple[int, int]] = set()
    untagged: set[int] = set()
    for line in text.splitlines():
        m = _AIDA.match(line)
        if m:
            leaf = int(m.group(1), 16)
            if m.group(6) is None:
                if leaf in untagged:
                    if leaf == 0:
                        break              # the next logical CPU's dump begins
                    continue               # an untagged repeat: sub-leaf unknown
                untagged.add(leaf)
                sub = 0
            else:
                sub = int(m.group(6), 16)
            a, b, c, d = (int(m.group(i), 16) for i in range(2, 6))
            entry: Leaf | None = (leaf, sub, a, b, c, d)
        elif (v := _VBOX.match(line)) is not None:
            g = [int(x, 16) for x in v.groups()]
            entry = (g[0], g[1], g[2], g[3], g[4], g[5])
        else:
            entry = parse_leaf(line.strip().strip("-").strip().strip("'\""))
        if entry is None:
            continue
        key = (entry[0], entry[1])
        if key in seen:
            if entry[0] == 0:
                break
            continue
        seen.add(key)
        leaves.append(entry)
    if not leaves:
        raise InputError("no CPUID leaf found (AIDA64 'CPUID 00000001: EAX-EBX-ECX-EDX' lines, VirtualBox "
                         "g_aCpuIdLeaves entries, or 'LEAF[.SUB]: EAX-EBX-ECX-EDX')", file=file)
    return leaves


def decoded_leaves(leaves: Iterable[Leaf]) -> list[Leaf]:
    """The leaves the ``leaves`` table decodes (the rest carry no QEMU feature names), in dump order."""
    table = cpuid_names().leaves
    wanted = {(leaf, sub) for (leaf, sub, _reg) in table}
    return [e for e in leaves if (e[0], e[1]) in wanted or (e[0], None) in wanted]


def leaf_lines(leaves: Iterable[Leaf]) -> list[str]:
    """``LEAF[.SUB]: EAX-EBX-ECX-EDX`` lines (upper-case hex; ``.SUB`` only for leaves with sub-leaves)."""
    subleafed = {leaf for (leaf, sub, _reg) in cpuid_names().leaves if sub is not None}
    out = []
    for fn, idx, eax, ebx, ecx, edx in leaves:
        head = f"{fn:08X}.{idx:X}" if fn in subleafed else f"{fn:08X}"
        out.append(f"{head}: {eax:08X}-{ebx:08X}-{ecx:08X}-{edx:08X}")
    return out


def features(leaves: Iterable[Leaf]) -> frozenset[str]:
    """``cpu_features`` of a bare-metal dump: :func:`~qemu_evmcs.core.cpuid.from_raw_dump`, names the bundled QEMU
    snapshot knows only (as ``host probe`` and ``host import --cpuinfo`` keep them)."""
    return load_snapshot().known(from_raw_dump(leaves))


__all__ = ["Leaf", "decoded_leaves", "features", "leaf_lines", "parse"]
