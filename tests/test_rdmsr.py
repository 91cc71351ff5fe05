"""rdmsr-style dump parsing: all accepted forms, tables of vmx-dumps.md, errors with lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from qemu_evmcs.hostio import rdmsr
from qemu_evmcs.core.errors import InputError
from qemu_evmcs.core.profile import bundled_profile_dir, load_profile

DATA = Path(__file__).parent / "data" / "host"
SKY = dict(load_profile(str(Path(bundled_profile_dir()) / "skylake-5.10.yaml")).msrs)


def test_plain_dump() -> None:
    assert rdmsr.parse((DATA / "skylake-rdmsr.txt").read_text()) == SKY


def test_markdown_table_source1() -> None:
    # 0x492 "(not in file)" is skipped, header/separator rows are ignored.
    assert rdmsr.parse((DATA / "skylake-table.md").read_text()) == SKY


def test_windbg_table_source2() -> None:
    got = rdmsr.parse((DATA / "windbg-table.md").read_text())
    assert got["IA32_VMX_PINBASED_CTLS"] == 0x7F00000016
    assert got["IA32_VMX_PROCBASED_CTLS2"] == 0x1FFCFF00000000
    assert got["IA32_VMX_CR4_FIXED1"] == 0x3767FF
    assert len(got) == 11


@pytest.mark.parametrize("line,name,value", [
    ("0x481 0x7f00000016", "IA32_VMX_PINBASED_CTLS", 0x7F00000016),
    ("481: 7f00000016", "IA32_VMX_PINBASED_CTLS", 0x7F00000016),
    ("0x481 = 0x7f00000016", "IA32_VMX_PINBASED_CTLS", 0x7F00000016),
    ("msr[481] = 0000007f`00000016", "IA32_VMX_PINBASED_CTLS", 0x7F00000016),
    ("IA32_VMX_BASIC: 0xda040000000004", "IA32_VMX_BASIC", 0xDA040000000004),
    ("MSR_IA32_VMX_VMFUNC 1", "IA32_VMX_VMFUNC", 1),
    ("| PINBASED_CTLS | 0x481 | 0000007f\\`00000016 |", "IA32_VMX_PINBASED_CTLS", 0x7F00000016),
    ("| 0x48c | 0xf0106334141 |", "IA32_VMX_EPT_VPID_CAP", 0xF0106334141),
    ("0x492 0x10  # IPI virtualization", "IA32_VMX_PROCBASED_CTLS3", 0x10),
])
def test_line_forms(line: str, name: str, value: int) -> None:
    assert rdmsr.parse(line + "\n") == {name: value}


def test_windbg_session() -> None:
    got = rdmsr.parse((DATA / "windbg.txt").read_text())
    assert got == {"IA32_VMX_PINBASED_CTLS": 0x7F00000016, "IA32_VMX_PROCBASED_CTLS": 0xFFF9FFFE0401E172}


def test_metadata() -> None:
    meta = rdmsr.parse_metadata((DATA / "skylake-rdmsr.txt").read_text())
    assert meta == {"name": "skylake-rdmsr", "kernel": "5.10.0-26-amd64"}


@pytest.mark.parametrize("text,message", [
    ("0x3a 0x5\n", "in.txt:1: MSR 0x3a is not a VMX capability MSR (known: 0x480-0x492)"),
    ("0x481 0x1ffffffffffffffff\n", ("in.txt:1: IA32_VMX_PINBASED_CTLS: MSR value '0x1ffffffffffffffff' does not "
                                    "fit in 64 bits")),
    ("0x481 zz\n", "in.txt:1: IA32_VMX_PINBASED_CTLS: MSR value 'zz' is not a hex number"),
    ("IA32_VMX_BASICS 0x1\n", "in.txt:1: unknown MSR name 'IA32_VMX_BASICS'"),
    ("0x481 0x7f00000016\n0x481 0x3f00000016\n",
     ("in.txt:2: IA32_VMX_PINBASED_CTLS: 0x481 given twice with different values: 0x7f00000016 at line 1, "
     "0x3f00000016 here")),
    ("| IA32_VMX_BASIC | 0x481 | 0x1 |\n", "in.txt:1: row names IA32_VMX_BASIC (0x480) but index cell says 0x481"),
    ("| PINBASED_CTLS | 0x481 | 0000007f`00000016 | 0x3f00000016 |\n",
     "in.txt:1: IA32_VMX_PINBASED_CTLS: row gives two different values 0x7f00000016 and 0x3f00000016"),
    ("hello\nworld\n", "in.txt: no VMX MSR values found"),
])
def test_errors(text: str, message: str) -> None:
    with pytest.raises(InputError) as ei:
        rdmsr.parse(text, file="in.txt")
    assert str(ei.value).startswith(message)
