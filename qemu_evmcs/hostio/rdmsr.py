"""Parse rdmsr-style dumps of the VMX capability MSRs.

Accepted line forms (one MSR per line; ``#`` starts a comment):

- ``0x481 0x7f00000016`` (also ``0x481: ...`` / ``0x481 = ...``)
- ``481: 7f00000016`` (index and value in hex without prefix, as ``rdmsr`` prints)
- ``IA32_VMX_PINBASED_CTLS 0x7f00000016`` (an MSR name instead of the index)
- ``msr[481] = 0000007f`00000016`` (Windbg ``rdmsr``; the backtick separates the halves)
- markdown table rows, e.g. ``| IA32_VMX_BASIC | 0x480 | 0xda040000000004 |`` or
  ``| PINBASED_CTLS | 0x481 | 0000007f`00000016 | 0x7f00000016 |``. The row is identified by an MSR name
  (``IA32_VMX_`` prefix optional) and/or index cell; the value is the next cell that parses as hex (every
  further hex cell must agree). Rows without an MSR name or index (headers, prose) and rows without a
  value (``(not in file)``) are skipped.

Other lines (headings, prose) are ignored, but a line that starts like a dump line and does not parse is an
error, and so is an MSR given twice with different values.

Optional metadata comment lines ``# name: ...``, ``# kernel: ...``, ``# vendor: ...``, ``# model_name: ...``
are returned by :func:`parse_metadata` (vmxcap text may carry them too).
"""

from __future__ import annotations

import re

from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.profile import parse_msr_value
from qemu_evmcs.core.registry import Msr, Registry, registry
from qemu_evmcs.core.regexcache import regex

METADATA_KEYS = ("name", "kernel", "vendor", "model_name")

# Patterns are written so that no two adjacent parts can match the same blanks: the obvious
# ``\s*[:=]?\s+`` / ``(\S.*?)\s*$`` forms backtrack quadratically on a long run of blanks.
_META = regex(r"^\s*#\s*(name|kernel|vendor|model_name)\s*:\s*(\S.*)$")  # group 2 is stripped by the caller
_WINDBG = regex(r"^\s*(?:\S*>\s*)?msr\[\s*(?:0x)?([0-9a-fA-F]+)\s*\]\s*=\s*(\S+)\s*$")
_PLAIN = regex(r"^\s*(?P<key>0[xX][0-9a-fA-F]+|[0-9a-fA-F]{3,8}|(?:MSR_)?IA32_VMX_[A-Za-z0-9_]+)"
               r"(?:\s*[:=]\s+|\s+)(?P<val>\S+)\s*(?:#.*)?$")
_HEXCELL = regex(r"^(?:0[xX])?[0-9a-fA-F][0-9a-fA-F_`']*$")
_SEPARATOR = regex(r"^:?-+:?$")


def parse_metadata(text: str) -> dict[str, str]:
    """``# key: value`` comment lines for the keys in :data:`METADATA_KEYS` (first occurrence wins)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _META.match(line)
        if m and m.group(1) not in out:
            out[m.group(1)] = m.group(2).strip().strip("\"'")
    return out


def _msr_by_name(name: str, reg: Registry) -> Msr | None:
    n = name.strip().strip("`*").upper().replace("-", "_")
    n = n.removeprefix("MSR_")
    for cand in (n, "IA32_VMX_" + n, "IA32_" + n):
        if cand in reg.msrs:
            return reg.msrs[cand]
    return None


def _msr_by_index(text: str, reg: Registry, *, file: str | None, line: int) -> Msr:
    try:
        index = int(text, 16)
    except ValueError:
        raise InputError(f"MSR index {text!r} is not hex", file=file, line=line) from None
    try:
        return reg.msr(index)
    except InputError:
        raise InputError(f"MSR {index:#x} is not a VMX capability MSR (known: "
                         f"{min(reg._by_index):#x}-{max(reg._by_index):#x})", file=file, line=line) from None


def _is_index_cell(cell: str) -> bool:
    return bool(re.fullmatch(r"0[xX][0-9a-fA-F]{1,8}", cell))


def _table_row(cells: list[str], reg: Registry, file: str | None, lineno: int) -> tuple[Msr, int] | None:
    msr: Msr | None = None
    rest: list[str] = []
    for i, cell in enumerate(cells):
        by_name = _msr_by_name(cell, reg) if re.fullmatch(r"[`*]*[A-Za-z][A-Za-z0-9_]*[`*]*", cell) else None
        if by_name is not None:
            if msr is not None and msr is not by_name:
                raise InputError(f"row names both {msr.name} and {by_name.name}", file=file, line=lineno)
            msr = by_name
            continue
        if _is_index_cell(cell) and not rest:
            idx = int(cell, 16)
            if idx in reg._by_index:
                cand = reg._by_index[idx]
                if msr is not None and msr is not cand:
                    raise InputError(f"row names {msr.name} ({msr.index:#x}) but index cell says {cell}",
                                     file=file, line=lineno)
                msr = cand
                continue
        if msr is not None:
            rest = cells[i:]
            break
    if msr is None:
        return None
    value: int | None = None
    for raw_cell in rest:
        cell = raw_cell.replace("\\`", "`").strip()  # markdown escapes the Windbg hi`lo backtick
        if not _HEXCELL.match(cell.strip("`")):
            continue
        v = parse_msr_value(cell.strip("`"), file=file, key=msr.name, line=lineno)
        if value is None:
            value = v
        elif v != value:
            raise InputError(f"row gives two different values {value:#x} and {v:#x}", file=file, key=msr.name,
                             line=lineno)
    if value is None:
        return None
    return msr, value


def parse(text: str, *, file: str | None = None, reg: Registry | None = None) -> dict[str, int]:
    """MSR name -> value from an rdmsr-style dump (see the module docstring).

    :raise InputError: naming ``file`` and the line, for a malformed dump line, an index that is not a VMX
        capability MSR, a value over 64 bits, conflicting duplicates, or no MSR at all.
    """
    reg = reg or registry()
    out: dict[str, int] = {}
    where: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        got: tuple[Msr, int] | None = None
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(_SEPARATOR.match(c) or not c for c in cells):
                continue
            got = _table_row(cells, reg, file, lineno)
        else:
            wm = _WINDBG.match(line)
            pm = _PLAIN.match(line) if wm is None else None
            if wm:
                msr = _msr_by_index(wm.group(1), reg, file=file, line=lineno)
                got = msr, parse_msr_value(wm.group(2), file=file, key=msr.name, line=lineno)
            elif pm:
                key = pm.group("key")
                if key.upper().startswith(("IA32_VMX_", "MSR_IA32_VMX_")):
                    by_name = _msr_by_name(key, reg)
                    if by_name is None:
                        raise InputError(f"unknown MSR name {key!r}", file=file, line=lineno)
                    msr = by_name
                else:
                    msr = _msr_by_index(key, reg, file=file, line=lineno)
                got = msr, parse_msr_value(pm.group("val"), file=file, key=msr.name, line=lineno)
        if got is None:
            continue
        msr, value = got
        if msr.name in out and out[msr.name] != value:
            raise InputError(f"{msr.index:#x} given twice with different values: "
                             f"{out[msr.name]:#x} at line {where[msr.name]}, {value:#x} here",
                             file=file, key=msr.name, line=lineno)
        out.setdefault(msr.name, value)
        where.setdefault(msr.name, lineno)
    if not out:
        raise InputError("no VMX MSR values found (expected vmxcap output, \"0x481 0x7f00000016\" or "
                         "\"481: 7f00000016\" lines, Windbg msr[481] lines or a markdown table)", file=file)
    return out


def looks_like_rdmsr(text: str) -> bool:
    """Cheap check: does any line look like a dump line or a table row with a VMX MSR?"""
    for raw in text.splitlines():
        line = raw.strip()
        if _WINDBG.match(line) or (_PLAIN.match(line) and not line.startswith("#")):
            return True
        if line.startswith("|") and re.search(r"0x4[89][0-9a-fA-F]\b|IA32_VMX_|_CTLS", line):
            return True
    return False
